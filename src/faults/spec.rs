//! A fault as a user writes it (`fault-set`'s arguments, a `[[fault]]` table), checked into
//! what the port does.

use super::frames::{FrameFault, FrameKind};
use serde::Deserialize;
use serde_json::Value;

/// Why a fault cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("unknown fault {0:?} (drop, delay, duplicate, corrupt, stall, link-flap, busy)")]
    UnknownKind(String),
    #[error("fault {kind} needs '{arg}'")]
    Missing { kind: FaultKind, arg: &'static str },
    #[error("fault {kind} does not take '{arg}'")]
    Unexpected { kind: FaultKind, arg: &'static str },
    #[error("share {0} is not a fraction from 0 to 1 or a percentage like \"10%\"")]
    Share(String),
    #[error("queue {0:?} is not rxN or txN")]
    Queue(String),
    #[error("{arg} {value} is out of range ({range})")]
    Range {
        arg: &'static str,
        value: u64,
        range: &'static str,
    },
    #[error("fault {kind} applies to VFs only")]
    VfOnly { kind: FaultKind },
    #[error("port {port} has no queue pair {queue}")]
    NoQueue { port: String, queue: u16 },
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    Drop,
    Delay,
    Duplicate,
    Corrupt,
    Stall,
    LinkFlap,
    Busy,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Drop,
        FaultKind::Delay,
        FaultKind::Duplicate,
        FaultKind::Corrupt,
        FaultKind::Stall,
        FaultKind::LinkFlap,
        FaultKind::Busy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Drop => "drop",
            FaultKind::Delay => "delay",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Stall => "stall",
            FaultKind::LinkFlap => "link-flap",
            FaultKind::Busy => "busy",
        }
    }

    pub fn parse(s: &str) -> Result<FaultKind, FaultError> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| FaultError::UnknownKind(s.to_string()))
    }

    /// The frame fault this kind is, if it is one.
    pub fn frame_fault(self) -> Option<FrameKind> {
        match self {
            FaultKind::Drop => Some(FrameKind::Drop),
            FaultKind::Delay => Some(FrameKind::Delay),
            FaultKind::Duplicate => Some(FrameKind::Duplicate),
            FaultKind::Corrupt => Some(FrameKind::Corrupt),
            _ => None,
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One of a port's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRef {
    Rx(u16),
    Tx(u16),
}

impl QueueRef {
    pub fn parse(s: &str) -> Result<QueueRef, FaultError> {
        let bad = || FaultError::Queue(s.to_string());
        let (make, n): (fn(u16) -> QueueRef, &str) = if let Some(n) = s.strip_prefix("rx") {
            (QueueRef::Rx, n)
        } else if let Some(n) = s.strip_prefix("tx") {
            (QueueRef::Tx, n)
        } else {
            return Err(bad());
        };
        n.parse().map(make).map_err(|_| bad())
    }

    pub fn index(self) -> u16 {
        match self {
            QueueRef::Rx(q) | QueueRef::Tx(q) => q,
        }
    }
}

/// A fault as written: the QMP arguments of `fault-set` (kebab-case) or a `[[fault]]` table of
/// the config file (either case).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FaultSpec {
    pub port: String,
    pub fault: String,
    /// Frame faults: the share of frames, 0..=1 or "N%".
    pub share: Option<Value>,
    /// Frame faults: the seed of the choice (same seed, same frames).
    pub seed: Option<u64>,
    #[serde(alias = "delay_ms")]
    pub delay_ms: Option<u64>,
    /// Stall: `rxN` or `txN`.
    pub queue: Option<String>,
    #[serde(alias = "duration_ms")]
    pub duration_ms: Option<u64>,
    #[serde(alias = "down_ms")]
    pub down_ms: Option<u64>,
    #[serde(alias = "up_ms")]
    pub up_ms: Option<u64>,
    pub count: Option<u64>,
}

/// A checked fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Frame(FrameFault),
    Stall {
        queue: QueueRef,
        ns: u64,
    },
    LinkFlap {
        down_ns: u64,
        up_ns: u64,
        count: u64,
    },
    Busy {
        ns: u64,
    },
}

/// Longest stall, busy window, delay or flap phase: an hour.
const MAX_MS: u64 = 3_600_000;

fn ms(arg: &'static str, v: Option<u64>, kind: FaultKind) -> Result<u64, FaultError> {
    let v = v.ok_or(FaultError::Missing { kind, arg })?;
    if v == 0 || v > MAX_MS {
        return Err(FaultError::Range {
            arg,
            value: v,
            range: "1..=3600000 ms",
        });
    }
    Ok(v * 1_000_000)
}

/// A share in parts per million.
fn share_ppm(v: &Value) -> Result<u32, FaultError> {
    let bad = || FaultError::Share(v.to_string());
    let frac = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        Value::String(s) => {
            let pct = s.trim().strip_suffix('%').ok_or_else(bad)?;
            pct.trim().parse::<f64>().map_err(|_| bad())? / 100.0
        }
        _ => return Err(bad()),
    };
    if !(0.0..=1.0).contains(&frac) {
        return Err(bad());
    }
    Ok((frac * 1_000_000.0).round() as u32)
}

impl FaultSpec {
    /// Checks the spec: the kind's arguments all there, no other.
    pub fn check(&self) -> Result<(FaultKind, Fault), FaultError> {
        let kind = FaultKind::parse(&self.fault)?;
        let given: [(&'static str, bool); 8] = [
            ("share", self.share.is_some()),
            ("seed", self.seed.is_some()),
            ("delay-ms", self.delay_ms.is_some()),
            ("queue", self.queue.is_some()),
            ("duration-ms", self.duration_ms.is_some()),
            ("down-ms", self.down_ms.is_some()),
            ("up-ms", self.up_ms.is_some()),
            ("count", self.count.is_some()),
        ];
        let takes: &[&str] = match kind {
            FaultKind::Drop | FaultKind::Duplicate | FaultKind::Corrupt => &["share", "seed"],
            FaultKind::Delay => &["share", "seed", "delay-ms"],
            FaultKind::Stall => &["queue", "duration-ms"],
            FaultKind::LinkFlap => &["down-ms", "up-ms", "count"],
            FaultKind::Busy => &["duration-ms"],
        };
        if let Some((arg, _)) = given.iter().find(|(a, set)| *set && !takes.contains(a)) {
            return Err(FaultError::Unexpected { kind, arg });
        }
        let fault = match kind.frame_fault() {
            Some(fk) => {
                let share = self
                    .share
                    .as_ref()
                    .ok_or(FaultError::Missing { kind, arg: "share" })?;
                let delay_ns = match fk {
                    FrameKind::Delay => ms("delay-ms", self.delay_ms, kind)?,
                    _ => 0,
                };
                Fault::Frame(FrameFault {
                    kind: fk,
                    ppm: share_ppm(share)?,
                    seed: self.seed.unwrap_or(0),
                    delay_ns,
                })
            }
            None => match kind {
                FaultKind::Stall => {
                    let q = self
                        .queue
                        .as_deref()
                        .ok_or(FaultError::Missing { kind, arg: "queue" })?;
                    Fault::Stall {
                        queue: QueueRef::parse(q)?,
                        ns: ms("duration-ms", self.duration_ms, kind)?,
                    }
                }
                FaultKind::LinkFlap => {
                    let count = self.count.unwrap_or(1);
                    if !(1..=1000).contains(&count) {
                        return Err(FaultError::Range {
                            arg: "count",
                            value: count,
                            range: "1..=1000",
                        });
                    }
                    Fault::LinkFlap {
                        down_ns: ms("down-ms", self.down_ms, kind)?,
                        up_ns: match self.up_ms {
                            Some(_) => ms("up-ms", self.up_ms, kind)?,
                            None => 0,
                        },
                        count,
                    }
                }
                _ => Fault::Busy {
                    ns: ms("duration-ms", self.duration_ms, kind)?,
                },
            },
        };
        Ok((kind, fault))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> Result<(FaultKind, Fault), FaultError> {
        serde_json::from_value::<FaultSpec>(v).unwrap().check()
    }

    #[test]
    fn frame_faults_take_a_share_as_fraction_or_percentage() {
        let (k, f) =
            spec(json!({"port": "vf0", "fault": "drop", "share": "12.5%", "seed": 7})).unwrap();
        assert_eq!(k, FaultKind::Drop);
        assert!(matches!(
            f,
            Fault::Frame(FrameFault {
                ppm: 125_000,
                seed: 7,
                ..
            })
        ));
        let (_, f) =
            spec(json!({"port": "vf0", "fault": "delay", "share": 0.5, "delay-ms": 20})).unwrap();
        assert!(matches!(
            f,
            Fault::Frame(FrameFault {
                ppm: 500_000,
                delay_ns: 20_000_000,
                ..
            })
        ));
        for bad in [json!(1.5), json!("x%"), json!(-0.1), json!(true)] {
            let e = spec(json!({"port": "vf0", "fault": "drop", "share": bad})).unwrap_err();
            assert!(matches!(e, FaultError::Share(_)), "{e}");
        }
    }

    #[test]
    fn each_kind_checks_its_arguments() {
        let e = spec(json!({"port": "vf0", "fault": "delay", "share": 1})).unwrap_err();
        assert_eq!(e.to_string(), "fault delay needs 'delay-ms'");
        let e =
            spec(json!({"port": "vf0", "fault": "drop", "share": 1, "queue": "rx0"})).unwrap_err();
        assert_eq!(e.to_string(), "fault drop does not take 'queue'");
        let e = spec(json!({"port": "vf0", "fault": "stall", "queue": "q1", "duration-ms": 5}))
            .unwrap_err();
        assert_eq!(e.to_string(), "queue \"q1\" is not rxN or txN");
        let (_, f) =
            spec(json!({"port": "vf0", "fault": "stall", "queue": "tx1", "duration-ms": 5}))
                .unwrap();
        assert_eq!(
            f,
            Fault::Stall {
                queue: QueueRef::Tx(1),
                ns: 5_000_000
            }
        );
        let e = spec(json!({"port": "vf0", "fault": "busy", "duration-ms": 0})).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = spec(json!({"port": "vf0", "fault": "melt"})).unwrap_err();
        assert!(e.to_string().starts_with("unknown fault \"melt\""), "{e}");
        let (_, f) = spec(json!({"port": "vf0", "fault": "link-flap", "down-ms": 100})).unwrap();
        assert_eq!(
            f,
            Fault::LinkFlap {
                down_ns: 100_000_000,
                up_ns: 0,
                count: 1
            }
        );
    }

    #[test]
    fn config_file_keys_may_use_underscores() {
        let s: FaultSpec =
            toml::from_str("port = \"vf1\"\nfault = \"delay\"\nshare = 0.25\ndelay_ms = 10\n")
                .unwrap();
        assert_eq!(s.delay_ms, Some(10));
    }
}
