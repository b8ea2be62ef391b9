//! The `sriov-emu ctl` client: a small QMP client and the `ip link ... vf N ...` vocabulary.
//! The human-readable and OpenMetrics renderings of the replies are in `render.rs`.

use crate::vf::knobs::{self, KnobError};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the control socket {path} (is sriov-emu running? see --control)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control connection failed")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply from the control socket: {0}")]
    Protocol(String),
    #[error("{desc}")]
    Qmp { class: String, desc: String },
    #[error("{0}")]
    Usage(String),
    #[error("no event from the control socket within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Knob(#[from] KnobError),
}

type Result<T> = std::result::Result<T, ClientError>;

/// A connected, negotiated QMP client.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
    /// The start of a line whose end has not arrived yet: a read that times out in the middle
    /// of a line leaves its bytes here for the next read.
    partial: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client> {
        let s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c = Client::over(s)?;
        let greeting = c.read()?;
        if let Some(e) = greeting.get("error") {
            // Refused before the greeting (another user, too many clients).
            return Err(ClientError::Qmp {
                class: e["class"].as_str().unwrap_or_default().to_string(),
                desc: e["desc"].as_str().unwrap_or_default().to_string(),
            });
        }
        if greeting.get("QMP").is_none() {
            return Err(ClientError::Protocol(format!(
                "no QMP greeting: {greeting}"
            )));
        }
        c.execute("qmp_capabilities", json!({}))?;
        Ok(c)
    }

    /// A client on a connected stream, before the greeting is read.
    fn over(s: UnixStream) -> Result<Client> {
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            events: Vec::new(),
            partial: Vec::new(),
        })
    }

    /// The next line as JSON. An I/O error (a read timeout) keeps what was read of the line.
    fn read(&mut self) -> Result<Value> {
        self.reader.read_until(b'\n', &mut self.partial)?;
        if !self.partial.ends_with(b"\n") {
            let msg = if self.partial.is_empty() {
                "connection closed".to_string()
            } else {
                format!(
                    "connection closed in the middle of a line: {}",
                    String::from_utf8_lossy(&self.partial)
                )
            };
            self.partial.clear();
            return Err(ClientError::Protocol(msg));
        }
        let line = std::mem::take(&mut self.partial);
        serde_json::from_slice(&line)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&line))))
    }

    /// Runs a command; events that arrive meanwhile are kept for `next_event`.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let req = json!({"execute": cmd, "arguments": args});
        let mut line =
            serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(ClientError::Qmp {
                    class: e["class"].as_str().unwrap_or("GenericError").to_string(),
                    desc: e["desc"].as_str().unwrap_or("").to_string(),
                });
            }
            return Err(ClientError::Protocol(v.to_string()));
        }
    }

    /// The next asynchronous event; blocks until one arrives (`ctl events`). Tests use
    /// [`Client::next_event_timeout`].
    pub fn next_event(&mut self) -> Result<Value> {
        if !self.events.is_empty() {
            return Ok(self.events.remove(0));
        }
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                return Ok(v);
            }
        }
    }

    /// The next asynchronous event, or [`ClientError::Timeout`] if none arrives within
    /// `timeout`. Uses the socket's read timeout and restores it afterwards; a line cut by the
    /// timeout is kept and completed by the next read, so no event is lost or garbled.
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<Value> {
        if !self.events.is_empty() {
            return Ok(self.events.remove(0));
        }
        let before = self.reader.get_ref().read_timeout()?;
        let result = self.next_event_until(Instant::now() + timeout, timeout);
        match (result, self.reader.get_ref().set_read_timeout(before)) {
            (Ok(ev), Err(e)) => {
                // Keep the event for the next call rather than lose it.
                self.events.insert(0, ev);
                Err(e.into())
            }
            (result, _) => result,
        }
    }

    fn next_event_until(&mut self, deadline: Instant, timeout: Duration) -> Result<Value> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(timeout));
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            match self.read() {
                Ok(v) if v.get("event").is_some() => return Ok(v),
                Ok(_) => {}
                Err(ClientError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(timeout))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn usage(msg: impl Into<String>) -> ClientError {
    ClientError::Usage(msg.into())
}

fn on_off(v: &str, what: &str) -> Result<bool> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(usage(format!("{what} takes on or off, not {v:?}"))),
    }
}

fn int(v: &str, what: &str) -> Result<i64> {
    v.parse()
        .map_err(|_| usage(format!("{what} takes a number, not {v:?}")))
}

/// `ADDR[:PORT]`, with IPv6 as `[ADDR]:PORT` when a port is given.
fn addr_port(s: &str) -> Result<(String, Option<i64>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (a, p) = rest
            .split_once("]:")
            .ok_or_else(|| usage(format!("{s:?}: expected [IPv6]:PORT")))?;
        return Ok((a.to_string(), Some(int(p, "port")?)));
    }
    match s.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => Ok((a.to_string(), Some(int(p, "port")?))),
        _ => Ok((s.to_string(), None)),
    }
}

/// `PROTO SRC[:PORT] DST[:PORT]` into flow arguments.
fn flow_args(words: &[String], args: &mut Map<String, Value>) -> Result<usize> {
    let [proto, src, dst, ..] = words else {
        return Err(usage("a flow is: tcp|udp|ip SRC[:PORT] DST[:PORT]"));
    };
    let (s, sp) = addr_port(src)?;
    let (d, dp) = addr_port(dst)?;
    args.insert("proto".into(), json!(proto));
    args.insert("src".into(), json!(s));
    args.insert("dst".into(), json!(d));
    if let Some(p) = sp {
        args.insert("src-port".into(), json!(p));
    }
    if let Some(p) = dp {
        args.insert("dst-port".into(), json!(p));
    }
    Ok(3)
}

/// Translates `fault PORT <words...>` into a QMP command: `clear [KIND]` (fault-clear), or
/// `KIND [KEY VALUE]...` (fault-set; keys as fault-set's arguments: share 10% | 0.1, seed N,
/// delay-ms N, queue rxN|txN, duration-ms N, down-ms N, up-ms N, count N).
pub fn fault_command(port: &str, words: &[String]) -> Result<(&'static str, Value)> {
    let usage = |why: String| ClientError::Usage(format!("fault {port}: {why}"));
    let Some((kind, rest)) = words.split_first() else {
        return Err(usage("a fault kind or `clear` is needed".into()));
    };
    if kind == "clear" {
        return match rest {
            [] => Ok(("fault-clear", json!({"port": port}))),
            [k] => Ok(("fault-clear", json!({"port": port, "fault": k}))),
            _ => Err(usage("`clear` takes at most one fault kind".into())),
        };
    }
    let mut args = json!({"port": port, "fault": kind});
    if rest.len() % 2 != 0 {
        return Err(usage("arguments come in KEY VALUE pairs".into()));
    }
    for kv in rest.chunks(2) {
        let key = kv[0].replace('_', "-");
        let v = &kv[1];
        let value = match key.as_str() {
            "queue" => json!(v),
            "share" if v.ends_with('%') => json!(v),
            "share" => json!(v
                .parse::<f64>()
                .map_err(|_| usage(format!("share {v:?} is not a number or N%")))?),
            _ => json!(v
                .parse::<u64>()
                .map_err(|_| usage(format!("{key} {v:?} is not a whole number")))?),
        };
        args[key] = value;
    }
    Ok(("fault-set", args))
}

/// Translates `vf N <words...>` (the `ip link` vocabulary) into a QMP command.
pub fn vf_command(vf: u32, words: &[String]) -> Result<(&'static str, Value)> {
    let mut args = Map::new();
    args.insert("vf".into(), json!(vf));
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["set", rest @ ..] => {
            if rest.is_empty() {
                return Err(usage("vf N set: nothing to set"));
            }
            // WORD VALUE pairs; the words and value types are those of `vf::KNOBS`.
            for pair in rest.chunks(2) {
                let [word, value @ ..] = pair else { continue };
                let knob =
                    knobs::by_word(word).ok_or_else(|| KnobError::UnknownWord(word.to_string()))?;
                let value = value
                    .first()
                    .ok_or_else(|| KnobError::NoValue(word.to_string()))?;
                args.insert(knob.qmp.into(), knob.word_value(word, value)?);
            }
            Ok(("vf-set", Value::Object(args)))
        }
        ["rss"] => Ok(("vf-rss-query", Value::Object(args))),
        ["rss", "test", ..] => {
            flow_args(&words[2..], &mut args)?;
            Ok(("vf-rss-test", Value::Object(args)))
        }
        ["rss", rest @ ..] => {
            let mut i = 0;
            while i < rest.len() {
                match rest[i] {
                    "key" => {
                        let k = rest.get(i + 1).ok_or_else(|| usage("key needs 80 hex digits"))?;
                        args.insert("key".into(), json!(k));
                        i += 2;
                    }
                    "learning" => {
                        let v = rest.get(i + 1).ok_or_else(|| usage("learning takes on or off"))?;
                        args.insert("flow-learning".into(), json!(on_off(v, "learning")?));
                        i += 2;
                    }
                    "table" => {
                        let mut q = Vec::new();
                        i += 1;
                        if rest.get(i) == Some(&"default") {
                            args.insert("table".into(), json!("default"));
                            i += 1;
                            continue;
                        }
                        while let Some(Ok(n)) = rest.get(i).map(|s| s.parse::<u64>()) {
                            q.push(n);
                            i += 1;
                        }
                        args.insert("table".into(), json!(q));
                    }
                    other => return Err(usage(format!("unknown rss setting {other:?}"))),
                }
            }
            Ok(("vf-rss-set", Value::Object(args)))
        }
        ["flow", "list"] => Ok(("vf-flow-list", Value::Object(args))),
        ["flow", "add", ..] => {
            let n = flow_args(&words[2..], &mut args)?;
            match &w[2 + n..] {
                ["queue", q] => args.insert("queue".into(), json!(int(q, "queue")?)),
                _ => return Err(usage("flow add PROTO SRC[:PORT] DST[:PORT] queue Q")),
            };
            Ok(("vf-flow-add", Value::Object(args)))
        }
        ["flow", "del", ..] => {
            flow_args(&words[2..], &mut args)?;
            Ok(("vf-flow-del", Value::Object(args)))
        }
        _ => Err(usage("vf N set ... | rss [key K] [table Q...|default] [learning on|off] | rss test ... | flow add|del|list ...")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn ip_link_vocabulary_maps_to_vf_set() {
        let (cmd, args) =
            vf_command(3, &words("set mac 02:00:00:00:03:09 vlan 10 qos 3 proto 802.1ad spoofchk off trust on state disable max_tx_rate 100 min_tx_rate 10 channels 4"))
                .unwrap();
        assert_eq!(cmd, "vf-set");
        assert_eq!(
            args,
            json!({"vf": 3, "mac": "02:00:00:00:03:09", "vlan": 10, "qos": 3, "proto": "802.1ad", "spoofchk": false,
                   "trust": true, "link-state": "disable", "max-tx-rate": 100, "min-tx-rate": 10, "channels": 4})
        );
        assert_eq!(
            vf_command(0, &words("set rate 50")).unwrap().1,
            json!({"vf": 0, "max-tx-rate": 50})
        );
        let err = |w| vf_command(0, &words(w)).unwrap_err().to_string();
        assert_eq!(
            err("set spoofchk maybe"),
            "spoofchk takes on or off, not \"maybe\""
        );
        assert_eq!(err("set vlan ten"), "vlan takes a number, not \"ten\"");
        assert_eq!(err("set vlan"), "vlan needs a value");
        assert_eq!(err("set trust on vlan"), "vlan needs a value");
        assert_eq!(
            err("set colour blue"),
            "unknown VF setting \"colour\" (the settings are mac, vlan, qos, proto, spoofchk, \
             trust, promisc, state, max_tx_rate|rate, min_tx_rate, channels, client_path)"
        );
        assert_eq!(err("set"), "vf N set: nothing to set");
    }

    #[test]
    fn rss_and_flow_words() {
        assert_eq!(vf_command(1, &words("rss")).unwrap().0, "vf-rss-query");
        let (c, a) = vf_command(1, &words("rss table 0 1 1 learning on")).unwrap();
        assert_eq!(
            (c, a["table"].clone(), a["flow-learning"].clone()),
            ("vf-rss-set", json!([0, 1, 1]), json!(true))
        );
        let (c, a) = vf_command(1, &words("rss test tcp 198.18.0.1:1000 198.18.0.2:80")).unwrap();
        assert_eq!(
            (c, a["src-port"].clone(), a["dst"].clone()),
            ("vf-rss-test", json!(1000), json!("198.18.0.2"))
        );
        let (c, a) = vf_command(
            1,
            &words("flow add udp [2001:db8::1]:53 2001:db8::2 queue 3"),
        )
        .unwrap();
        assert_eq!(
            (
                c,
                a["src"].clone(),
                a["src-port"].clone(),
                a["queue"].clone()
            ),
            ("vf-flow-add", json!("2001:db8::1"), json!(53), json!(3))
        );
        assert!(a.get("dst-port").is_none());
        assert!(vf_command(1, &words("flow add udp 1.2.3.4")).is_err());
    }

    /// A client on one end of a socket pair; the test plays the server on the other end.
    fn pair() -> (Client, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (Client::over(ours).unwrap(), theirs)
    }

    #[test]
    fn event_timeout_keeps_a_line_cut_by_the_timeout() {
        let (mut c, mut server) = pair();
        server
            .write_all(br#"{"event": "VF_LINK_CHANGE", "da"#)
            .unwrap();
        let t = Instant::now();
        let err = c
            .next_event_timeout(Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(c.reader.get_ref().read_timeout().unwrap(), None, "restored");
        server
            .write_all(b"ta\": {\"vf\": 1}}\n{\"event\": \"FDB_MOVE\"}\n")
            .unwrap();
        let ev = c.next_event_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(ev, json!({"event": "VF_LINK_CHANGE", "data": {"vf": 1}}));
        // The second line came in the same read: it is buffered, not lost.
        let ev = c.next_event_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(ev["event"], "FDB_MOVE");
        // The blocking variant reads from the same place.
        server.write_all(b"{\"event\": \"A\"}\n").unwrap();
        assert_eq!(c.next_event().unwrap()["event"], "A");
    }

    #[test]
    fn event_timeout_restores_the_read_timeout_and_skips_replies() {
        let (mut c, mut server) = pair();
        let earlier = Some(Duration::from_secs(7));
        c.reader.get_ref().set_read_timeout(earlier).unwrap();
        // Not an event: skipped, and the deadline covers the whole wait.
        server.write_all(b"{\"return\": {}}\n").unwrap();
        let err = c.next_event_timeout(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
        assert_eq!(c.reader.get_ref().read_timeout().unwrap(), earlier);
        // A zero timeout is a poll, not an error of the socket.
        let err = c.next_event_timeout(Duration::ZERO).unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "no event from the control socket within 0ns"
        );
    }

    #[test]
    fn event_seen_during_a_command_is_returned_at_once() {
        let (mut c, mut server) = pair();
        server
            .write_all(b"{\"event\": \"VF_ATTACHED\"}\n{\"return\": 5}\n")
            .unwrap();
        assert_eq!(c.execute("query-x", json!({})).unwrap(), json!(5));
        let ev = c.next_event_timeout(Duration::ZERO).unwrap();
        assert_eq!(ev["event"], "VF_ATTACHED");
    }

    #[test]
    fn closed_connection_is_an_error_not_a_timeout() {
        let (mut c, mut server) = pair();
        server.write_all(b"{\"event\": \"X\"").unwrap();
        drop(server);
        let err = c.next_event_timeout(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol(m) if m.contains("middle of a line")),
            "{err:?}"
        );
        let err = c.next_event_timeout(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol(m) if m == "connection closed"),
            "{err:?}"
        );
    }
}
