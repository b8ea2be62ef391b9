//! Where a frame goes once the FDB has decided: fan-out to ports, and FDB moves announced.

use super::{PortId, Verdict};
use crate::events::EventBus;
use crate::wire::MacAddr;

/// Calls `deliver` for every port a frame with `verdict` from `ingress` goes to, among ports
/// `0..ports` for which `attached` holds: the known port for unicast, every other attached port
/// for a flood, none when the destination is the ingress port. False if it went nowhere.
pub fn fan_out(
    verdict: Verdict,
    ingress: PortId,
    ports: usize,
    mut attached: impl FnMut(PortId) -> bool,
    mut deliver: impl FnMut(PortId),
) -> bool {
    match verdict {
        Verdict::SamePort => false,
        Verdict::Unicast(dst) => {
            let go = dst != ingress && attached(dst);
            if go {
                deliver(dst);
            }
            go
        }
        Verdict::Flood => {
            let mut any = false;
            for j in 0..ports {
                let Ok(p) = u16::try_from(j).map(PortId) else {
                    break;
                };
                if p != ingress && attached(p) {
                    any = true;
                    deliver(p);
                }
            }
            any
        }
    }
}

/// A MAC that learning moved from one port to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbMove {
    pub mac: MacAddr,
    pub from: PortId,
    pub to: PortId,
}

impl FdbMove {
    /// Logs the move and emits `FDB_MOVE` (`name` gives a port's name). Called after the
    /// switch lock is released: events go to control clients, never under the FDB's lock.
    pub fn announce(&self, events: &EventBus, name: impl Fn(PortId) -> Option<String>) {
        let from = name(self.from).unwrap_or_else(|| self.from.to_string());
        let to = name(self.to).unwrap_or_else(|| self.to.to_string());
        tracing::info!(mac = %self.mac, %from, %to, "FDB move");
        events.emit(
            "FDB_MOVE",
            serde_json::json!({"mac": self.mac.to_string(), "from": from, "to": to}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(verdict: Verdict, attached: &[u16]) -> (bool, Vec<u16>) {
        let mut out = Vec::new();
        let any = fan_out(
            verdict,
            PortId(1),
            6,
            |p| attached.contains(&p.0),
            |p| out.push(p.0),
        );
        (any, out)
    }

    #[test]
    fn unicast_flood_and_same_port() {
        assert_eq!(run(Verdict::Unicast(PortId(3)), &[1, 3]), (true, vec![3]));
        assert_eq!(run(Verdict::Unicast(PortId(3)), &[1]), (false, vec![]));
        assert_eq!(run(Verdict::Unicast(PortId(1)), &[1]), (false, vec![]));
        assert_eq!(run(Verdict::Flood, &[0, 1, 2, 5]), (true, vec![0, 2, 5]));
        assert_eq!(run(Verdict::Flood, &[1]), (false, vec![]));
        assert_eq!(run(Verdict::SamePort, &[0, 1, 2]), (false, vec![]));
    }

    #[test]
    fn a_move_is_an_event() {
        let bus = EventBus::new();
        let rx = bus.subscribe();
        let mv = FdbMove {
            mac: "02:00:00:00:00:01".parse().unwrap(),
            from: PortId(0),
            to: PortId(254),
        };
        mv.announce(&bus, |p| (p.0 == 0).then(|| "vf0".to_string()));
        let e = rx.try_recv().unwrap();
        assert_eq!(e.name, "FDB_MOVE");
        assert_eq!(e.data["from"], "vf0");
        assert_eq!(e.data["to"], "port254");
    }
}
