//! Every check of a [`Prefork`]'s configuration, in one place, before anything is
//! opened or forked; each refusal names the option at fault.

use super::credentials::Credentials;
use super::error::{invalid, RunError};
use super::prefork::Prefork;
use super::systemd::ServiceEnv;
use crate::Handoff;
use crate::Machine;
use nix::unistd;

/// What [`Prefork::check`] found valid for a daemon with children: the machine
/// (with its policies and timers) and the credentials children switch to.
pub(super) struct Supervision {
    pub(super) machine: Machine,
    pub(super) credentials: Option<Credentials>,
}

impl<T: 'static> Prefork<T> {
    /// Every check of the configuration, in one place, before anything is opened or
    /// forked: each failure names the option at fault. With children, builds the
    /// machine (with its policies, and the timers `service` asks for) and resolves
    /// the credentials; `None`: in process.
    pub(super) fn check(
        &mut self,
        service: &ServiceEnv,
        handoff: Option<Handoff>,
    ) -> Result<Option<Supervision>, RunError> {
        let euid = unistd::geteuid();
        if self.require_root && !euid.is_root() {
            return Err(invalid(
                "require_root",
                format!("require_root is set but this process runs as uid {euid}, not root"),
            ));
        }
        if (self.user.is_some() || self.group.is_some()) && !euid.is_root() {
            let option = if self.user.is_some() { "user" } else { "group" };
            return Err(invalid(
                option,
                format!(
                    "user/group are set but this process runs as uid {euid}: only root can switch"
                ),
            ));
        }
        if self.disconnect_check_every.is_zero() {
            return Err(invalid(
                "disconnect_check_every",
                "must be greater than zero",
            ));
        }
        if self.options.auto_reload_check_every.is_some() && self.auto_reload_handler.is_none() {
            return Err(invalid(
                "auto_reload_handler",
                "is required when auto_reload_check_every is set",
            ));
        }
        if self.daemonize {
            let missing: Vec<&str> = [
                ("error_log_path", self.error_log_path.is_none()),
                ("access_log_path", self.access_log_path.is_none()),
                ("pid_path", self.pid_path.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, missing)| missing.then_some(name))
            .collect();
            if !missing.is_empty() {
                return Err(invalid(
                    "daemonize",
                    format!(
                        "needs error_log_path, access_log_path and pid_path; missing: {}",
                        missing.join(", ")
                    ),
                ));
            }
        }
        // The seed's `prefork = 0` asks for in-process mode; with a scaling policy
        // of your own `prefork` is not read (no more "0 to please the validator").
        if let Some(addr) = &self.metrics {
            metrics_addresses(addr)?;
        }
        let in_process = self.in_process || (self.options.prefork == 0 && self.scaling.is_none());
        if let Some(c) = &self.command {
            super::command::check_passed(c.listeners, c.cooperative)
                .map_err(|e| invalid("listen", e))?;
            if !c.cooperative && self.options.max_requests_per_child.is_some() {
                // Seen from outside, a request shorter than a look is never
                // seen: the limit would silently never be reached.
                return Err(invalid(
                    "max_requests_per_child",
                    "needs busy_from slot: a command's requests are counted only when it \
                     reports them (the kernel shows preforkd its connections, not its requests)",
                ));
            }
        }
        if in_process && self.command.is_some() {
            return Err(invalid(
                "prefork",
                "is 0, but a command runs in children: at least 1 (the pool grows from there)",
            ));
        }
        if in_process {
            // No child to scale, reload, cancel or run as another user: such an
            // option would be silently ignored.
            let set = [
                ("scaling_policy", self.scaling.is_some()),
                ("reload_policy", self.reload.is_some()),
                ("disconnect_policy", self.disconnect.is_some()),
                ("user", self.user.is_some()),
                ("group", self.group.is_some()),
                ("metrics", self.metrics.is_some()),
            ];
            if let Some((option, _)) = set.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    option,
                    "is set, but the daemon runs in process (in_process, or prefork = 0): \
                     it applies to children, and there are none",
                ));
            }
            if handoff.is_some() {
                return Err(invalid(
                    "in_process",
                    "the running daemon has children to hand over; an in-process image cannot adopt them",
                ));
            }
            // (`validate` leaves `prefork` to the default policy, unused here.)
            self.options.validate()?;
            return Ok(None);
        }
        let mut builder = Machine::builder(self.options.clone());
        if let Some(p) = self.scaling.take() {
            builder = builder.scaling_policy(p);
        }
        if let Some(p) = self.reload.take() {
            builder = builder.reload_policy(p);
        }
        // Look for hung-up clients only if someone listens (a hook or a policy).
        if self.on_client_disconnect.is_some() || self.disconnect.is_some() {
            builder = builder.disconnect_check_every(self.disconnect_check_every);
        }
        if let Some(p) = self.disconnect.take() {
            builder = builder.disconnect_policy(p);
        }
        // Pings go to the service manager: without one, no timer at all.
        if let (Some(every), Some(_)) = (service.watchdog, &service.notify_socket) {
            builder = builder.watchdog_interval(every);
        }
        if let Some(h) = handoff {
            builder = builder.adopt(h);
        }
        let machine = builder.build()?;
        let credentials = Credentials::resolve(self.user.as_deref(), self.group.as_deref())?;
        Ok(Some(Supervision {
            machine,
            credentials,
        }))
    }
}

/// The addresses `metrics` names: refused unless it resolves.
fn metrics_addresses(addr: &str) -> Result<Vec<std::net::SocketAddr>, RunError> {
    use std::net::ToSocketAddrs;
    let found: Vec<std::net::SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| {
            invalid(
                "metrics",
                format!("{addr:?} is not an address to listen on: {e}"),
            )
        })?
        .collect();
    if found.is_empty() {
        return Err(invalid(
            "metrics",
            format!("{addr:?} resolves to no address"),
        ));
    }
    Ok(found)
}

impl<T: 'static> Prefork<T> {
    /// Binds the metrics listener (close-on-exec, as std makes every socket), or
    /// after an upgrade takes the one the previous image handed over, once
    /// [`check`](Self::check) passed: the one check that opens something, so it
    /// is not made by `check_config` or an upgrade's trial, whose daemon holds
    /// the port. After an upgrade (`upgraded`) a failure is no reason to
    /// stop the children's new parent: it is returned as a note to log, and the
    /// daemon serves without metrics.
    pub(super) fn bind_metrics(&mut self, upgraded: bool) -> Result<Option<String>, RunError> {
        let Some(addr) = self.metrics.clone() else {
            // Handed over by a previous image that served metrics: not ours now.
            drop(super::upgrade::claim_metrics_listener(&[]));
            return Ok(None);
        };
        let bound = metrics_addresses(&addr).and_then(|found| {
            // After an upgrade, the socket the previous image served on.
            if let Some(l) = super::upgrade::claim_metrics_listener(&found) {
                return Ok(l);
            }
            std::net::TcpListener::bind(&found[..])
                .map_err(|e| invalid("metrics", format!("cannot listen on {addr}: {e}")))
        });
        match bound {
            Ok(l) => {
                // A stray for an upgrade's check: it does not cross the exec.
                super::upgrade::register_private_listener(std::os::fd::AsRawFd::as_raw_fd(&l));
                self.metrics_listener = Some(l);
                Ok(None)
            }
            Err(e) if upgraded => Ok(Some(format!("serving without metrics: {e}"))),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Fixed, TerminateChild};
    use std::time::Duration;

    fn daemon() -> Prefork<()> {
        Prefork::new(|| Ok(()), |_, _| Ok(())).daemonize(false)
    }

    /// The machine once `after_init` succeeded.
    fn started(mut m: Machine) -> Machine {
        let ok = crate::Event::HookFinished {
            hook: crate::HookKind::AfterInit,
            ok: true,
        };
        m.handle(crate::Time::ZERO, ok);
        m
    }

    /// The option a configuration is refused for.
    fn refused(mut p: Prefork<()>) -> (&'static str, String) {
        match p.check(&ServiceEnv::default(), None) {
            Err(RunError::Config(e)) => (e.option(), e.reason().to_string()),
            Err(e) => panic!("refused, but not naming an option: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn each_refusal_names_its_option() {
        let (o, r) = refused(daemon().disconnect_check_every(Duration::ZERO));
        assert_eq!(
            (o, r.as_str()),
            ("disconnect_check_every", "must be greater than zero")
        );
        let (o, _) = refused(daemon().auto_reload_check_every(Duration::from_secs(1)));
        assert_eq!(o, "auto_reload_handler");
        let (o, r) = refused(daemon().daemonize(true).pid_path("/tmp/x.pid"));
        assert_eq!(o, "daemonize");
        assert!(
            r.ends_with("missing: error_log_path, access_log_path"),
            "{r}"
        );
        let e = daemon()
            .prefork(10)
            .max_children(5)
            .check(&ServiceEnv::default(), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("max_children"), "{e}");
    }

    #[test]
    fn the_metrics_address_must_resolve_and_be_free() {
        let (o, r) = refused(daemon().metrics("not an address"));
        assert_eq!(o, "metrics");
        assert!(r.contains("not an address to listen on"), "{r}");
        assert_eq!(
            refused(daemon().in_process().metrics("127.0.0.1:0")).0,
            "metrics"
        );
        // A port in use: refused at the start, naming the option.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let mut p = daemon().metrics(addr.as_str());
        assert!(p.check(&ServiceEnv::default(), None).is_ok());
        match p.bind_metrics(false) {
            Err(RunError::Config(e)) => {
                assert_eq!(e.option(), "metrics");
                assert!(e.reason().contains(&addr), "{}", e.reason());
            }
            other => panic!("not refused: {other:?}"),
        }
        // After an upgrade it is a note, not a stop.
        let note = p.bind_metrics(true).unwrap().unwrap();
        assert!(note.contains("serving without metrics"), "{note}");
        // A free one is bound.
        let mut p = daemon().metrics("127.0.0.1:0");
        assert_eq!(p.bind_metrics(false).unwrap(), None);
        assert!(p.metrics_listener.is_some());
    }

    #[test]
    fn in_process_refuses_what_only_children_would_use() {
        // In process, a policy or a user would be silently ignored.
        let (o, r) = refused(daemon().in_process().scaling_policy(Fixed(4)));
        assert_eq!(o, "scaling_policy");
        assert!(r.contains("runs in process"), "{r}");
        assert_eq!(refused(daemon().prefork(0).user("root")).0, "user");
        assert_eq!(
            refused(daemon().in_process().disconnect_policy(TerminateChild)).0,
            "disconnect_policy"
        );
        let (o, _) = refused(daemon().in_process().user("root"));
        // (As non-root the user is refused for that reason first: still `user`.)
        assert_eq!(o, "user");
        assert!(daemon()
            .in_process()
            .check(&ServiceEnv::default(), None)
            .unwrap()
            .is_none());
        assert!(daemon()
            .prefork(0)
            .check(&ServiceEnv::default(), None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn with_children_the_machine_gets_the_policies() {
        // prefork is the default policy's: with one of your own, 0 is not read.
        let s = daemon()
            .prefork(0)
            .scaling_policy(Fixed(4))
            .check(&ServiceEnv::default(), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.machine.scaling_policy().quiet_range(), 4..=4);
        assert!(
            !started(s.machine).awaits_first_busy(),
            "no disconnect check"
        );
        let s = daemon()
            .disconnect_policy(TerminateChild)
            .check(&ServiceEnv::default(), None)
            .unwrap()
            .unwrap();
        assert!(
            started(s.machine).awaits_first_busy(),
            "disconnects watched"
        );
    }
}
