//! System tests of `--user`/`--group`: children get exactly the configured uid,
//! gid and supplementary groups, resolved in the parent before any fork (a child
//! never reads the group database). They need root (`useradd`, `groupadd`,
//! switching ids); run with
//! `cargo test --features system-tests --test system_credentials`. Not being root
//! or a missing program fails the test, never skips it.
#![cfg(feature = "system-tests")]
// Real processes need real time.
#![allow(clippy::disallowed_methods)]

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

fn run(name: &str, args: &[&str]) {
    let out = Command::new(program(name)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// nogroup on Debian: the test user's primary group.
const NOGROUP: u32 = 65534;

/// A user of this test's own (primary group nogroup, no home) in two groups of
/// its own; all three removed when dropped (after the demo: declare it first).
struct TestUser {
    name: String,
    uid: u32,
    /// The two supplementary groups: (name, gid).
    groups: [(String, u32); 2],
}

impl TestUser {
    fn create(tag: &str) -> TestUser {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this system test must run as root (it adds a user and switches to it)"
        );
        // Short names (useradd takes 32 characters at most), unique to this run.
        let name = format!("pfd{tag}{}", std::process::id());
        let group_names = [format!("{name}a"), format!("{name}b")];
        // From here on, what exists is removed even if a step below fails.
        let mut user = TestUser {
            name: name.clone(),
            uid: 0,
            groups: [(String::new(), 0), (String::new(), 0)],
        };
        for (i, g) in group_names.iter().enumerate() {
            run("groupadd", &[g]);
            let gid = nix::unistd::Group::from_name(g).unwrap().unwrap().gid;
            user.groups[i] = (g.clone(), gid.as_raw());
        }
        run(
            "useradd",
            &[
                "--no-create-home",
                "--no-user-group",
                "--gid",
                &NOGROUP.to_string(),
                "--groups",
                &group_names.join(","),
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ],
        );
        user.uid = nix::unistd::User::from_name(&name)
            .unwrap()
            .unwrap()
            .uid
            .as_raw();
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // -f: a just-killed child of the demo may not be reaped yet.
        let _ = Command::new(program("userdel"))
            .args(["-f", &self.name])
            .output();
        for (g, _) in &self.groups {
            if !g.is_empty() {
                let _ = Command::new(program("groupdel")).arg(g).output();
            }
        }
    }
}

/// The numbers of a line of /proc/PID/status (`Uid:`, `Gid:`, `Groups:`), sorted
/// for `Groups:` (the kernel keeps them sorted anyway).
fn status_ids(pid: i32, field: &str) -> Option<Vec<u32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find_map(|l| l.strip_prefix(field))?;
    let mut ids: Vec<u32> = line
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    if field == "Groups:" {
        ids.sort_unstable();
    }
    Some(ids)
}

/// The `Uid:` and `Gid:` lines (real, effective, saved, filesystem) and `Groups:`.
type Ids = (Vec<u32>, Vec<u32>, Vec<u32>);

fn ids_of(pid: i32) -> Option<Ids> {
    Some((
        status_ids(pid, "Uid:")?,
        status_ids(pid, "Gid:")?,
        status_ids(pid, "Groups:")?,
    ))
}

fn expected(uid: u32, gid: u32, mut groups: Vec<u32>) -> Ids {
    groups.sort_unstable();
    groups.dedup();
    (vec![uid; 4], vec![gid; 4], groups)
}

/// Waits until the demo has `n` children, all with exactly `want`; panics with
/// what they have otherwise.
fn assert_children_have(d: &Demo, n: usize, want: &Ids) {
    // A child seen just after its fork may not have switched yet: give it a moment.
    let ok = wait_for(Duration::from_secs(10), || {
        let kids = d.children();
        kids.len() == n && kids.iter().all(|&c| ids_of(c).as_ref() == Some(want))
    });
    assert!(
        ok,
        "want {n} children with {want:?}, have {:?}\n{}",
        d.children()
            .iter()
            .map(|&c| (c, ids_of(c)))
            .collect::<Vec<_>>(),
        d.log()
    );
}

#[test]
fn children_get_exactly_the_users_uid_gid_and_supplementary_groups() {
    let u = TestUser::create("c");
    let (a, b) = (u.groups[0].1, u.groups[1].1);
    let parent_ids = ids_of(std::process::id() as i32).unwrap();

    // The user alone: its primary group and every group it is a member of.
    let d = Demo::start(&["--prefork", "2", "--user", &u.name]);
    assert_children_have(&d, 2, &expected(u.uid, NOGROUP, vec![NOGROUP, a, b]));
    assert_eq!(get(d.addr, "/").unwrap().0, 200);
    assert_eq!(
        ids_of(d.pid()),
        Some(parent_ids.clone()),
        "the parent keeps root"
    );
    drop(d);

    // With --group: that group replaces the primary one, also in the list (the
    // user's primary group is not in it: nogroup does not list the user).
    let d = Demo::start(&[
        "--prefork",
        "2",
        "--user",
        &u.name,
        "--group",
        &u.groups[0].0,
    ]);
    assert_children_have(&d, 2, &expected(u.uid, a, vec![a, b]));
    drop(d);

    // --group alone: root's uid, that group, and only that group.
    let d = Demo::start(&["--prefork", "2", "--group", &u.groups[1].0]);
    assert_children_have(&d, 2, &expected(0, b, vec![b]));
}

/// The defect this guards against: each child ran `initgroups`, reading
/// /etc/group (NSS: allocation, locks another parent thread may hold at fork)
/// between fork and its main loop. Now the parent resolves the list once, before
/// any fork; seen from outside, a child forked after the group file changed still
/// gets the list resolved at start (as it gets the uid and gid resolved at start).
#[test]
fn children_forked_after_a_group_file_change_get_the_groups_resolved_at_start() {
    let u = TestUser::create("r");
    let (a, b) = (u.groups[0].1, u.groups[1].1);
    let d = Demo::start(&["--prefork", "1", "--user", &u.name]);
    let want = expected(u.uid, NOGROUP, vec![NOGROUP, a, b]);
    assert_children_have(&d, 1, &want);
    let first = d.children()[0];

    // The user leaves its second group in the file; a child forked now must not
    // have looked.
    run("gpasswd", &["--delete", &u.name, &u.groups[1].0]);
    let now = nix::unistd::getgrouplist(
        &std::ffi::CString::new(u.name.clone()).unwrap(),
        nix::unistd::Gid::from_raw(NOGROUP),
    )
    .unwrap();
    assert!(
        !now.contains(&nix::unistd::Gid::from_raw(b)),
        "the group file still lists the user in {}: {now:?}",
        u.groups[1].0
    );
    send_signal(first, 9);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let kids = d.children();
            kids.len() == 1 && kids[0] != first
        }),
        "no replacement child: {:?}\n{}",
        d.children(),
        d.log()
    );
    assert_children_have(&d, 1, &want);
}
