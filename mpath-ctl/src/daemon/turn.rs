//! The event loop's turns: each takes one input (something the host tells, an operator's
//! command, a scrape, a timer, a step of planned route changes, a reload), lets its handler
//! mark what it left out of date and brings that in line with one [`Daemon::reconcile`]. The
//! loop itself ([`Daemon::serve`]) waits on the host through [`HostIo`], so that scenario
//! tests drive it on the in-memory host and its clock.

use tokio::sync::mpsc;

use crate::{
    api::control::{Command, Reply, Request},
    api::metrics::Scrape,
    core::identity::NicSlot,
    core::state::Event,
    daemon::{
        Daemon,
        host_io::{HostEvent, HostIo},
        logging,
        service::Notifier,
    },
    net::probe_socket::monotonic_ns,
};

/// One input of the event loop.
#[derive(Debug)]
pub(super) enum Input {
    Host(HostEvent),
    /// A request from the control socket.
    Command(Command),
    /// A metrics scrape.
    Scrape(Scrape),
    /// A timer is due.
    Timers,
    /// Planned route changes wait: a few are made.
    RouteStep,
    /// SIGHUP (`mpathctl reload` is a command).
    Reload,
}

/// A signal to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
}

/// What reaches the event loop from outside the host: the control socket's commands, the
/// metrics server's scrapes, signals.
pub(super) struct Inbox {
    pub commands: mpsc::Receiver<Command>,
    pub scrapes: mpsc::Receiver<Scrape>,
    pub signals: mpsc::Receiver<Signal>,
}

impl<H: HostIo> Daemon<H> {
    /// Turns until a stop signal (or the inbox's signals closed); `service` hears of each
    /// turn and of reloads.
    pub(super) async fn serve(
        &mut self,
        inbox: &mut Inbox,
        service: &mut Notifier,
    ) -> anyhow::Result<()> {
        loop {
            service.turn(
                std::time::Instant::now(),
                || self.hash_states(),
                || self.status(),
            );
            let wake = self.host.sleep_until(self.next_wakeup());
            let input = tokio::select! {
                event = self.host.next_event() => Input::Host(event?),
                Some(command) = inbox.commands.recv() => Input::Command(command),
                Some(scrape) = inbox.scrapes.recv() => Input::Scrape(scrape),
                () = wake => Input::Timers,
                // Planned route changes, a few at a time between everything else.
                () = std::future::ready(()), if self.routing.has_pending() => Input::RouteStep,
                signal = inbox.signals.recv() => match signal {
                    Some(Signal::Reload) => Input::Reload,
                    Some(Signal::Stop) | None => return Ok(()),
                },
            };
            let reloading = match &input {
                Input::Reload => true,
                Input::Command(command) => matches!(command.request, Request::Reload {}),
                _ => false,
            };
            if reloading {
                service.reloading();
            }
            self.turn(input).await;
            if reloading {
                service.reloaded(self.hash_states(), &self.status());
            }
        }
    }

    /// One turn: the input's handler marks what it left out of date, one reconcile pass
    /// brings it in line, and only then is a command answered (its client may look at the
    /// host next) and a failover ahead of the link event timed.
    pub(super) async fn turn(&mut self, input: Input) {
        let now = self.host.now();
        let mut answer = None;
        let mut confirmed = Vec::new();
        match input {
            Input::Host(HostEvent::Net(event)) => self.net_event(event).await,
            Input::Host(HostEvent::ProbeReplies(replies)) => {
                for reply in replies {
                    self.probe_reply(reply);
                }
            }
            Input::Host(HostEvent::CarrierLost(losses)) => {
                for loss in losses {
                    if let Some(nic) = self.carrier_lost(loss.ifindex, now).await {
                        confirmed.extend(loss.reported_ns.map(|at| (nic, at)));
                    }
                }
            }
            Input::Host(HostEvent::CarrierHookFailed(e)) => {
                tracing::error!(
                    "reading the carrier hook's events: {e}; reading the carrier instead"
                );
                self.carrier_hook = false;
                self.host
                    .set_carrier_period(self.config.daemon.carrier_poll);
                self.watch_every_carrier();
            }
            Input::Command(command) => {
                let reply = self.request(command.request, now).await;
                answer = Some((command.reply, reply));
            }
            Input::Scrape(scrape) => {
                self.metrics.retain(&self.live_series());
                scrape.answer(self.metrics.render(&self.metrics_snapshot()));
            }
            Input::Timers => {
                // The loop picks among ready inputs at random: replies already queued are
                // read before the timers can declare their probes lost.
                for reply in self.host.ready_probe_replies() {
                    self.probe_reply(reply);
                }
                self.tick().await
            }
            Input::RouteStep => self.route_step().await,
            // SIGHUP has no one to answer; the reload logged its result.
            Input::Reload => {
                let _: Reply = self.reload().await;
            }
        }
        self.reconcile().await;
        for (nic, reported_ns) in confirmed {
            let took_us = monotonic_ns().saturating_sub(reported_ns) / 1000;
            tracing::info!(
                interface = %nic,
                "{nic} failed over {took_us} us after its driver reported the carrier loss \
                 (addresses, bucket table and nexthop groups moved)"
            );
        }
        logging::summarise_repeats();
        if let Some((to, reply)) = answer {
            let _: Result<_, _> = to.send(reply);
        }
    }

    /// Answers a request of the control socket; an operator's offline or online is carried
    /// out by the turn's reconcile pass.
    async fn request(&mut self, request: Request, now: std::time::Instant) -> Reply {
        match request {
            Request::Status {} => Reply::Status(self.status()),
            Request::Reload {} => self.reload().await,
            Request::Offline { interface } => {
                self.admin(&interface, |nic| Event::Offline { nic }, "offline", now)
            }
            Request::Online { interface } => {
                self.admin(&interface, |nic| Event::Online { nic }, "online", now)
            }
            Request::Probes {} => Reply::Refused {
                message: "probes are streamed by the control server".into(),
            },
        }
    }

    /// An operator's offline or online of a NIC, refused with the state machine's reason.
    fn admin(
        &mut self,
        interface: &str,
        event: fn(NicSlot) -> Event,
        what: &str,
        now: std::time::Instant,
    ) -> Reply {
        let Some(at) = self.groups.nic_named(interface) else {
            return Reply::Refused {
                message: format!("{interface} is not in any group"),
            };
        };
        match self.groups[at.group].fsm.handle(event(at.nic), now) {
            Ok(actions) => {
                self.apply(at.group, actions);
                Reply::Done {
                    message: format!("{interface} is {what}"),
                }
            }
            Err(e) => Reply::Refused {
                message: e.to_string(),
            },
        }
    }
}
