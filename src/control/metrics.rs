//! `--metrics-listen ADDR:PORT`: a Prometheus scrape endpoint. `GET /metrics` answers with the
//! OpenMetrics text of `ctl stats --format openmetrics` (`query-stats` rendered by
//! `render::render_openmetrics`: the same names and values); every other path is 404.
//!
//! One thread serves one request per connection (`Connection: close`), as a scrape is one
//! request every few seconds. A request head is capped at `MAX_REQUEST` bytes and must arrive
//! within `REQUEST_TIMEOUT`, and the reply must be taken within it too, so a slow or stuck
//! client delays only other scrapes, never the data path or the control socket.

use super::commands::execute;
use super::render::render_openmetrics;
use crate::daemon::Daemon;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the endpoint cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics scrapes on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the metrics thread")]
    Thread(#[source] std::io::Error),
}

/// The media type of the OpenMetrics text format, as Prometheus asks for it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The largest request head read (request line and headers); a larger one is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;

/// How long a client has to send its request head, and then to take the reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The path served.
pub const PATH: &str = "/metrics";

/// A listening endpoint; dropping it stops the thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: a free port, see `local_addr`) and serves scrapes of
    /// `daemon`'s counters on a thread of its own.
    pub fn start(addr: SocketAddr, daemon: Arc<Daemon>) -> Result<MetricsServer, MetricsError> {
        let listen_err = |source| MetricsError::Listen { addr, source };
        let listener = TcpListener::bind(addr).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(c) => serve(c, &daemon),
                        Err(e) => {
                            // Out of descriptors, say: do not spin.
                            tracing::warn!("metrics endpoint: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(MetricsError::Thread)?;
        tracing::info!(%addr, "metrics endpoint listening (GET {PATH})");
        Ok(MetricsServer { addr, stop })
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the thread from accept(2); a wildcard address is reached on loopback.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (or `HEAD`: the same head, no body).
    Metrics {
        body: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (`METHOD TARGET HTTP/x.y` and headers).
fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = text.lines().next().unwrap_or_default();
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != PATH {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { body: true },
        "HEAD" => Route::Metrics { body: false },
        _ => Route::MethodNotAllowed,
    }
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Complete(Vec<u8>),
    TooLarge,
    /// Closed, timed out or failed before the head was complete.
    Gone,
}

/// Reads up to the blank line that ends a request head, at most `MAX_REQUEST` bytes, before
/// `deadline`.
fn read_head(c: &mut impl Read, deadline: Instant, set_timeout: impl Fn(Duration)) -> Head {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Head::Gone;
        };
        set_timeout(left);
        let n = match c.read(&mut chunk) {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(n) => n,
        };
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let tail = &head[from..];
        if let Some(end) = find(tail, b"\r\n\r\n")
            .map(|i| from + i + 4)
            .or_else(|| find(tail, b"\n\n").map(|i| from + i + 2))
        {
            if end > MAX_REQUEST {
                return Head::TooLarge;
            }
            head.truncate(end);
            return Head::Complete(head);
        }
        if head.len() > MAX_REQUEST {
            return Head::TooLarge;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A whole HTTP/1.1 reply.
fn reply(status: &str, content_type: &str, extra: &str, body: &str, send_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if send_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The reply to `head` (or to a head that did not come whole), rendering the counters only
/// for a scrape.
fn answer(head: &Head, metrics: impl FnOnce() -> String) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let route = match head {
        Head::Complete(h) => route(h),
        Head::TooLarge => {
            return reply(
                "431 Request Header Fields Too Large",
                TEXT,
                "",
                &format!("request head larger than {MAX_REQUEST} bytes\n"),
                true,
            )
        }
        Head::Gone => Route::BadRequest,
    };
    match route {
        Route::Metrics { body } => reply("200 OK", CONTENT_TYPE, "", &metrics(), body),
        Route::NotFound => reply(
            "404 Not Found",
            TEXT,
            "",
            &format!("not found: the metrics are at {PATH}\n"),
            true,
        ),
        Route::MethodNotAllowed => reply(
            "405 Method Not Allowed",
            TEXT,
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD\n",
            true,
        ),
        Route::BadRequest => reply("400 Bad Request", TEXT, "", "bad request\n", true),
    }
}

/// The OpenMetrics text of every port's counters, as `ctl stats --format openmetrics`.
fn scrape(d: &Daemon) -> String {
    match execute(d, "query-stats", serde_json::Map::new(), &|| {}) {
        Ok(stats) => render_openmetrics(&stats),
        Err(e) => {
            // query-stats of every port has no failure; keep the text valid if it ever has.
            tracing::warn!("metrics endpoint: query-stats failed: {}", e.desc);
            "# EOF\n".to_string()
        }
    }
}

/// Serves one connection: one request, one reply, closed.
fn serve(mut c: TcpStream, d: &Daemon) {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let peer = c.peer_addr().ok();
    let timeout_of = c.try_clone().ok();
    let head = read_head(&mut c, deadline, |left| {
        if let Some(s) = &timeout_of {
            let _ = s.set_read_timeout(Some(left));
        }
    });
    if head == Head::Gone {
        tracing::debug!(?peer, "metrics client went or timed out before its request");
        return;
    }
    let out = answer(&head, || scrape(d));
    let _ = c.set_write_timeout(Some(REQUEST_TIMEOUT));
    if let Err(e) = c.write_all(&out) {
        tracing::debug!(?peer, "metrics client did not take the reply: {e}");
        return;
    }
    linger(&mut c);
}

/// Closes after the reply as HTTP servers do: our side first, then what the client still
/// sends (a body, the rest of a refused head) is read and dropped for a moment, since
/// closing with unread data resets the connection and can destroy the reply in flight.
fn linger(c: &mut TcpStream) {
    const LINGER: Duration = Duration::from_millis(200);
    const LINGER_BYTES: usize = 64 * 1024;
    let _ = c.shutdown(std::net::Shutdown::Write);
    let _ = c.set_read_timeout(Some(LINGER));
    let end = Instant::now() + LINGER;
    let (mut chunk, mut drained) = ([0u8; 1024], 0);
    while drained < LINGER_BYTES && Instant::now() < end {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_the_metrics_path_are_served() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { body: false }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn a_head_ends_at_the_blank_line_and_is_capped() {
        let far = Instant::now() + Duration::from_secs(5);
        let mut r: &[u8] = b"GET /metrics HTTP/1.1\r\nA: b\r\n\r\nrest";
        assert_eq!(
            read_head(&mut r, far, |_| {}),
            Head::Complete(b"GET /metrics HTTP/1.1\r\nA: b\r\n\r\n".to_vec())
        );
        let mut r: &[u8] = b"GET /metrics HTTP/1.1\n\n";
        assert!(matches!(read_head(&mut r, far, |_| {}), Head::Complete(_)));
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST)
        );
        assert_eq!(read_head(&mut big.as_bytes(), far, |_| {}), Head::TooLarge);
        let endless = vec![b'a'; 3 * MAX_REQUEST];
        assert_eq!(
            read_head(&mut endless.as_slice(), far, |_| {}),
            Head::TooLarge
        );
        let mut r: &[u8] = b"GET /metrics HTTP/1.1\r\n";
        assert_eq!(read_head(&mut r, far, |_| {}), Head::Gone);
        let past = Instant::now();
        let mut r: &[u8] = b"GET /metrics HTTP/1.1\r\n\r\n";
        assert_eq!(read_head(&mut r, past, |_| {}), Head::Gone);
    }

    #[test]
    fn replies_say_their_length_and_close() {
        let head = Head::Complete(b"GET /metrics HTTP/1.1\r\n\r\n".to_vec());
        let r = String::from_utf8(answer(&head, || "# EOF\n".into())).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{r}"
        );
        assert!(r.contains("Content-Length: 6\r\nConnection: close\r\n\r\n# EOF\n"));
        let head = Head::Complete(b"HEAD /metrics HTTP/1.1\r\n\r\n".to_vec());
        let r = String::from_utf8(answer(&head, || "# EOF\n".into())).unwrap();
        assert!(
            r.ends_with("Content-Length: 6\r\nConnection: close\r\n\r\n"),
            "{r}"
        );
        let head = Head::Complete(b"GET /x HTTP/1.1\r\n\r\n".to_vec());
        let r = String::from_utf8(answer(&head, || unreachable!())).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        let r = String::from_utf8(answer(&Head::TooLarge, || unreachable!())).unwrap();
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let head = Head::Complete(b"DELETE /metrics HTTP/1.1\r\n\r\n".to_vec());
        let r = String::from_utf8(answer(&head, || unreachable!())).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET, HEAD\r\n"));
    }
}
