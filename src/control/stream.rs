//! Splits a byte stream into JSON messages the way QEMU's JSON streamer does: by balancing
//! braces and brackets (outside strings), not by newlines, since QMP clients need not send
//! any. Oversized messages and stray text are reported, and the stream resynchronises.

use super::qmp::MAX_LINE;

/// One unit taken from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A complete, balanced JSON text (not yet parsed).
    Message(Vec<u8>),
    /// A message longer than `MAX_LINE` bytes (its length); it was discarded.
    TooLong(usize),
    /// Text outside any object or array, up to the next whitespace.
    Stray(Vec<u8>),
}

/// The splitter's state between reads.
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    in_str: bool,
    escaped: bool,
    len: usize,
}

impl Splitter {
    /// Feeds bytes; calls `out` for every piece completed.
    pub fn feed(&mut self, bytes: &[u8], mut out: impl FnMut(Piece)) {
        for &b in bytes {
            if self.depth == 0 {
                match b {
                    b'{' | b'[' => {
                        if !self.buf.is_empty() {
                            out(Piece::Stray(std::mem::take(&mut self.buf)));
                        }
                        self.depth = 1;
                        self.len = 1;
                        self.buf.push(b);
                    }
                    b' ' | b'\t' | b'\r' | b'\n' if !self.buf.is_empty() => {
                        out(Piece::Stray(std::mem::take(&mut self.buf)));
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ if self.buf.len() < 256 => self.buf.push(b),
                    _ => {}
                }
                continue;
            }
            self.len += 1;
            if self.buf.len() <= MAX_LINE {
                self.buf.push(b);
            }
            if self.in_str {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_str = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let msg = std::mem::take(&mut self.buf);
                        if self.len > MAX_LINE {
                            out(Piece::TooLong(self.len));
                        } else {
                            out(Piece::Message(msg));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Piece> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |p| out.push(p));
        }
        out
    }

    #[test]
    fn messages_without_newlines_and_across_reads() {
        let p = split(&[
            br#"{"execute":"a"}{"execute":"#,
            br#""b","arguments":{"s":"}{\"x"}}"#,
        ]);
        assert_eq!(
            p,
            vec![
                Piece::Message(br#"{"execute":"a"}"#.to_vec()),
                Piece::Message(br#"{"execute":"b","arguments":{"s":"}{\"x"}}"#.to_vec()),
            ]
        );
    }

    #[test]
    fn stray_text_and_oversized_messages() {
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_LINE));
        let p = split(&[b"hello\n", big.as_bytes(), b" {}"]);
        assert_eq!(p[0], Piece::Stray(b"hello".to_vec()));
        assert!(matches!(p[1], Piece::TooLong(n) if n == big.len()));
        assert_eq!(p[2], Piece::Message(b"{}".to_vec()));
    }
}
