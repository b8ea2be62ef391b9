//! Where a frame goes once the FDB has decided: fan-out to ports by their role in the VEB,
//! and FDB moves announced.

use super::{PortId, PortRole, Remote, Verdict};
use crate::events::EventBus;
use crate::wire::MacAddr;

/// The remote of a copy that goes to every remote behind a port (a VXLAN uplink's head-end
/// replication of a flood).
pub const ALL_REMOTES: Remote = Remote::MAX;

/// Calls `deliver` for every port a frame with `verdict` from `ingress` goes to, among ports
/// `0..ports` that are attached (`role` gives their role, `None` when detached), with the
/// remote behind the port:
/// - unicast: the known port;
/// - broadcast and multicast: every other attached port (VLAN membership is the egress
///   policy's);
/// - unknown unicast: the other PV ports, the uplink and promiscuous VFs, never other VFs
///   (as an SR-IOV NIC's embedded bridge: a VF's MAC is known, so unknown means elsewhere);
/// - none when the destination is the ingress port.
///
/// False if it went nowhere.
pub fn fan_out(
    verdict: Verdict,
    ingress: PortId,
    ports: usize,
    mut role: impl FnMut(PortId) -> Option<PortRole>,
    mut deliver: impl FnMut(PortId, Remote),
) -> bool {
    let takes: fn(PortRole) -> bool = match verdict {
        Verdict::SamePort => return false,
        Verdict::Unicast(dst, remote) => {
            let go = dst != ingress && role(dst).is_some();
            if go {
                deliver(dst, remote);
            }
            return go;
        }
        Verdict::Flood => |_| true,
        Verdict::Unknown => PortRole::takes_unknown_unicast,
    };
    let mut any = false;
    for j in 0..ports {
        let Ok(p) = u16::try_from(j).map(PortId) else {
            break;
        };
        if p != ingress && role(p).is_some_and(takes) {
            any = true;
            deliver(p, ALL_REMOTES);
        }
    }
    any
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

    const VF: PortRole = PortRole::Vf { promisc: false };
    const PROMISC: PortRole = PortRole::Vf { promisc: true };

    /// Ports 0-3 VFs (2 promiscuous), 4-5 PV, 6 the uplink; `attached` lists the attached.
    fn run(verdict: Verdict, ingress: u16, attached: &[u16]) -> (bool, Vec<(u16, Remote)>) {
        let roles = [
            VF,
            VF,
            PROMISC,
            VF,
            PortRole::Pv,
            PortRole::Pv,
            PortRole::Uplink,
        ];
        let mut out = Vec::new();
        let any = fan_out(
            verdict,
            PortId(ingress),
            roles.len(),
            |p| attached.contains(&p.0).then(|| roles[p.index()]),
            |p, r| out.push((p.0, r)),
        );
        (any, out)
    }

    #[test]
    fn unicast_and_same_port() {
        let all = [0, 1, 2, 3, 4, 5, 6];
        assert_eq!(
            run(Verdict::Unicast(PortId(3), 0), 1, &all),
            (true, vec![(3, 0)])
        );
        assert_eq!(
            run(Verdict::Unicast(PortId(6), 4), 1, &all),
            (true, vec![(6, 4)])
        );
        assert_eq!(
            run(Verdict::Unicast(PortId(3), 0), 1, &[1]),
            (false, vec![])
        );
        assert_eq!(
            run(Verdict::Unicast(PortId(1), 0), 1, &all),
            (false, vec![])
        );
        assert_eq!(run(Verdict::SamePort, 1, &all), (false, vec![]));
    }

    #[test]
    fn broadcast_reaches_every_other_attached_port() {
        let a = ALL_REMOTES;
        assert_eq!(
            run(Verdict::Flood, 1, &[0, 1, 2, 5, 6]),
            (true, vec![(0, a), (2, a), (5, a), (6, a)])
        );
        assert_eq!(run(Verdict::Flood, 1, &[1]), (false, vec![]));
    }

    #[test]
    fn unknown_unicast_never_reaches_a_vf_that_is_not_promiscuous() {
        let all = [0, 1, 2, 3, 4, 5, 6];
        let a = ALL_REMOTES;
        // From a VF: PV ports, the uplink, the promiscuous VF.
        assert_eq!(
            run(Verdict::Unknown, 0, &all),
            (true, vec![(2, a), (4, a), (5, a), (6, a)])
        );
        // From the uplink: PV ports and the promiscuous VF, not back to the wire.
        assert_eq!(
            run(Verdict::Unknown, 6, &all),
            (true, vec![(2, a), (4, a), (5, a)])
        );
        // From a PV port: the other PV port, the uplink, the promiscuous VF.
        assert_eq!(
            run(Verdict::Unknown, 4, &all),
            (true, vec![(2, a), (5, a), (6, a)])
        );
        // Nowhere to go: the sender counts it.
        assert_eq!(run(Verdict::Unknown, 6, &[0, 1, 3, 6]), (false, vec![]));
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
