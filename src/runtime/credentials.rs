//! The user and groups children run as: resolved in the parent, applied in the
//! child with system calls only.

use super::error::{invalid, RunError};
use nix::unistd;

/// The user and groups children switch to, resolved once in the parent, before
/// any fork: a child only makes the set*id calls (no NSS lookup, which allocates
/// and may take a lock another parent thread held at the fork).
#[derive(Debug, Clone)]
pub(super) struct Credentials {
    /// The user's uid (`None`: only the group changes, the uid stays).
    pub(super) uid: Option<unistd::Uid>,
    pub(super) gid: unistd::Gid,
    /// The supplementary groups: `getgrouplist(user, gid)`, or just `gid`
    /// without a user.
    pub(super) groups: Vec<unistd::Gid>,
    /// The user's name, for messages.
    pub(super) user_name: Option<String>,
}

/// Why a child could not switch: the call that failed and its errno, or the ids
/// it ended up with are not the configured ones. Built without allocating.
#[derive(Debug, PartialEq)]
pub(super) enum SwitchError {
    Call(&'static str, nix::Error),
    NotDropped,
}

impl std::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchError::Call(call, e) => write!(f, "{call}: {e}"),
            SwitchError::NotDropped => {
                f.write_str("the ids after the switch are not the configured ones")
            }
        }
    }
}

impl Credentials {
    pub(super) fn resolve(
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<Option<Credentials>, RunError> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let lookup = |e: nix::Error| RunError::Io {
            what: "looking up the user or group".into(),
            source: e.into(),
        };
        let u = match user {
            Some(name) => Some(
                unistd::User::from_name(name)
                    .map_err(lookup)?
                    .ok_or_else(|| invalid("user", format!("user {name:?} does not exist")))?,
            ),
            None => None,
        };
        let gid = match group {
            Some(name) => {
                unistd::Group::from_name(name)
                    .map_err(lookup)?
                    .ok_or_else(|| invalid("group", format!("group {name:?} does not exist")))?
                    .gid
            }
            None => u.as_ref().map_or(unistd::getgid(), |u| u.gid),
        };
        let groups = match &u {
            Some(u) => {
                let name = std::ffi::CString::new(u.name.clone())
                    .map_err(|_| invalid("user", format!("user name {:?} has a NUL", u.name)))?;
                // What initgroups(name, gid) would set, looked up here, not in a child.
                unistd::getgrouplist(&name, gid).map_err(|e| RunError::Io {
                    what: format!("looking up the groups of user {:?}", u.name),
                    source: e.into(),
                })?
            }
            None => vec![gid],
        };
        Ok(Some(Credentials {
            user_name: u.as_ref().map(|u| u.name.clone()),
            uid: u.map(|u| u.uid),
            gid,
            groups,
        }))
    }

    /// The user children switch to, if one is set.
    pub(super) fn user_name(&self) -> Option<String> {
        self.user_name.clone()
    }

    /// Switches this (child) process: groups first, then the gid, then the uid;
    /// then checks all real, effective and saved ids took. Only system calls
    /// (async-signal-safe, no allocation): it runs between fork and the child's
    /// main loop.
    pub(super) fn apply(&self) -> Result<(), SwitchError> {
        unistd::setgroups(&self.groups).map_err(|e| SwitchError::Call("setgroups", e))?;
        unistd::setgid(self.gid).map_err(|e| SwitchError::Call("setgid", e))?;
        if let Some(uid) = self.uid {
            unistd::setuid(uid).map_err(|e| SwitchError::Call("setuid", e))?;
        }
        let g = unistd::getresgid().map_err(|e| SwitchError::Call("getresgid", e))?;
        if [g.real, g.effective, g.saved] != [self.gid; 3] {
            return Err(SwitchError::NotDropped);
        }
        if let Some(uid) = self.uid {
            let u = unistd::getresuid().map_err(|e| SwitchError::Call("getresuid", e))?;
            if [u.real, u.effective, u.saved] != [uid; 3] {
                return Err(SwitchError::NotDropped);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_of_a_user_carry_its_getgrouplist_resolved_before_any_fork() {
        let c = Credentials::resolve(Some("root"), None).unwrap().unwrap();
        let root = unistd::Gid::from_raw(0);
        assert_eq!(c.uid, Some(unistd::Uid::from_raw(0)));
        assert_eq!(c.gid, root);
        let want = unistd::getgrouplist(c"root", root).unwrap();
        assert!(want.contains(&root), "{want:?}");
        assert_eq!(c.groups, want);
    }

    #[test]
    fn credentials_of_a_group_alone_keep_the_uid_and_only_that_group() {
        let c = Credentials::resolve(None, Some("root")).unwrap().unwrap();
        assert_eq!(c.uid, None);
        assert_eq!(c.groups, vec![unistd::Gid::from_raw(0)]);
        assert!(Credentials::resolve(None, None).unwrap().is_none());
    }

    #[test]
    fn unknown_users_and_groups_are_refused_by_name() {
        for (user, group, want) in [
            (
                Some("no-such-user-here"),
                None,
                "user \"no-such-user-here\" does not exist",
            ),
            (
                None,
                Some("no-such-group-here"),
                "group \"no-such-group-here\" does not exist",
            ),
        ] {
            match Credentials::resolve(user, group) {
                Err(RunError::Config(e)) => assert_eq!(e.reason(), want),
                other => panic!("{user:?}/{group:?}: {other:?}"),
            }
        }
    }
}
