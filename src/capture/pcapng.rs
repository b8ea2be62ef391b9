//! The pcapng a capture writes, as Wireshark and tshark open it: one Interface Description
//! Block per port (`vf3`, `pv0`, `uplink`) and one named `drops`, each announced before its
//! first packet, with nanosecond timestamps (`if_tsresol` 9); an Enhanced Packet Block per
//! frame with the direction in its flags and the switch's decision as its comment.
//!
//! With a size limit the capture is a ring of `RING_FILES` files (`NAME-00001.pcapng`, ...),
//! each at most a quarter of the limit: a new file (with its own section header and the
//! interfaces again) starts before a block would pass its share, and the oldest goes, so the
//! total stays under the limit. Every file is complete at a block boundary once flushed.

use super::record::Record;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Files in a size-limited capture's ring.
pub const RING_FILES: usize = 4;
/// The smallest size limit (a file must hold a few jumbo frames).
pub const MIN_LIMIT: u64 = 1 << 20;
/// The `drops` interface's name.
pub const DROPS: &str = "drops";

/// Why a capture file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PcapngError {
    #[error("cannot create {path}")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the capture")]
    Write(#[source] pcap_file::PcapError),
    #[error("cannot write the capture")]
    Io(#[source] io::Error),
    #[error("cannot remove the old capture file {path}")]
    Remove {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("a size limit of {0} bytes is below the minimum of {MIN_LIMIT}")]
    LimitTooSmall(u64),
}

impl From<pcap_file::PcapError> for PcapngError {
    /// An I/O failure is reported as such (the crate's own text calls every one a read error).
    fn from(e: pcap_file::PcapError) -> Self {
        match e {
            pcap_file::PcapError::IoError(io) => PcapngError::Io(io),
            other => PcapngError::Write(other),
        }
    }
}

/// Counts what goes through it (buffered bytes included, so a file's size is known before it
/// is flushed).
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Sink = Counting<BufWriter<Box<dyn Write + Send>>>;

/// Where the capture goes.
enum Target {
    /// One file (or a stream: standard output, a FIFO), no limit.
    Single,
    /// A ring of files `STEM-NNNNN.EXT` under `dir`, each up to `part` bytes.
    Ring {
        dir: PathBuf,
        stem: String,
        ext: String,
        part: u64,
        seq: u32,
        files: VecDeque<PathBuf>,
    },
}

/// A capture's output.
pub struct PcapngOut {
    writer: PcapNgWriter<Sink>,
    target: Target,
    snaplen: u32,
    /// Interface id of each captured interface (port index, or `None` for `drops`) in the
    /// current file, in the order they were announced.
    ifaces: HashMap<Option<u16>, u32>,
    order: Vec<(Option<u16>, String)>,
    /// Port names by id, filled as ports appear (a comment names them without allocating).
    names: Vec<Option<String>>,
    /// The comment and the block being encoded (reused: no allocation per record).
    comment: String,
    block: Vec<u8>,
}

fn section() -> SectionHeaderBlock<'static> {
    SectionHeaderBlock {
        endianness: if cfg!(target_endian = "little") {
            Endianness::Little
        } else {
            Endianness::Big
        },
        options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
            "sriov-emu {}",
            env!("CARGO_PKG_VERSION")
        )))],
        ..SectionHeaderBlock::default()
    }
}

fn open(path: &Path) -> Result<Box<dyn Write + Send>, PcapngError> {
    std::fs::File::create(path)
        .map(|f| Box::new(f) as Box<dyn Write + Send>)
        .map_err(|source| PcapngError::Create {
            path: path.display().to_string(),
            source,
        })
}

fn writer(out: Box<dyn Write + Send>) -> Result<PcapNgWriter<Sink>, PcapngError> {
    let sink = Counting {
        inner: BufWriter::with_capacity(256 * 1024, out),
        bytes: 0,
    };
    PcapNgWriter::with_section_header(sink, section()).map_err(PcapngError::from)
}

impl PcapngOut {
    /// A capture into `path`; with `limit`, a ring of files named after it whose total stays
    /// under `limit` bytes.
    pub fn create(path: &Path, snaplen: u32, limit: Option<u64>) -> Result<Self, PcapngError> {
        let Some(limit) = limit else {
            return Ok(Self::with(writer(open(path)?)?, Target::Single, snaplen));
        };
        if limit < MIN_LIMIT {
            return Err(PcapngError::LimitTooSmall(limit));
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let stem = path
            .file_stem()
            .map_or("capture".into(), |s| s.to_string_lossy().into_owned());
        let ext = path
            .extension()
            .map_or("pcapng".into(), |s| s.to_string_lossy().into_owned());
        let first = dir.join(format!("{stem}-00001.{ext}"));
        let w = writer(open(&first)?)?;
        let target = Target::Ring {
            dir,
            stem,
            ext,
            part: limit / RING_FILES as u64,
            seq: 1,
            files: VecDeque::from([first]),
        };
        Ok(Self::with(w, target, snaplen))
    }

    /// A capture streamed into `out` (standard output, a pipe).
    pub fn stream(out: Box<dyn Write + Send>, snaplen: u32) -> Result<Self, PcapngError> {
        Ok(Self::with(writer(out)?, Target::Single, snaplen))
    }

    fn with(writer: PcapNgWriter<Sink>, target: Target, snaplen: u32) -> Self {
        PcapngOut {
            writer,
            target,
            snaplen,
            ifaces: HashMap::new(),
            order: Vec::new(),
            names: Vec::new(),
            comment: String::with_capacity(256),
            block: Vec::with_capacity(16 * 1024),
        }
    }

    /// The files of the capture, oldest first (empty for a stream).
    pub fn files(&self) -> Vec<PathBuf> {
        match &self.target {
            Target::Single => Vec::new(),
            Target::Ring { files, .. } => files.iter().cloned().collect(),
        }
    }

    fn write_idb(&mut self, name: &str) -> Result<(), PcapngError> {
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: self.snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.to_string())),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.writer
            .write_pcapng_block(idb)
            .map(|_| ())
            .map_err(PcapngError::from)
    }

    /// The id of `port`'s interface in the current file, announced first if new.
    fn iface(
        &mut self,
        port: Option<u16>,
        name: &dyn Fn(u16) -> String,
    ) -> Result<u32, PcapngError> {
        if let Some(&id) = self.ifaces.get(&port) {
            return Ok(id);
        }
        let n = port.map_or_else(|| DROPS.to_string(), name);
        self.write_idb(&n)?;
        let id = self.order.len() as u32;
        self.ifaces.insert(port, id);
        self.order.push((port, n));
        Ok(id)
    }

    /// Starts the ring's next file if a block of `next` bytes would pass this file's share.
    fn rotate_for(&mut self, next: u64) -> Result<(), PcapngError> {
        let written = self.writer.get_ref().bytes;
        let Target::Ring {
            dir,
            stem,
            ext,
            part,
            seq,
            files,
        } = &mut self.target
        else {
            return Ok(());
        };
        if written + next <= *part || written < 4096 {
            return Ok(());
        }
        *seq += 1;
        let path = dir.join(format!("{stem}-{seq:05}.{ext}"));
        let fresh = writer(open(&path)?)?;
        files.push_back(path);
        let old = std::mem::replace(&mut self.writer, fresh);
        let mut sink = old.into_inner();
        let _ = sink.flush();
        drop(sink);
        while files.len() > RING_FILES {
            if let Some(gone) = files.pop_front() {
                std::fs::remove_file(&gone).map_err(|source| PcapngError::Remove {
                    path: gone.display().to_string(),
                    source,
                })?;
            }
        }
        // The new file announces the interfaces again, in the same order (same ids).
        let order = std::mem::take(&mut self.order);
        for (_, n) in &order {
            self.write_idb(n)?;
        }
        self.order = order;
        Ok(())
    }

    /// Caches `port`'s name.
    fn cache_name(&mut self, port: u16, name: &dyn Fn(u16) -> String) {
        let i = usize::from(port);
        if self.names.len() <= i {
            self.names.resize(i + 1, None);
        }
        if self.names[i].is_none() {
            self.names[i] = Some(name(port));
        }
    }

    /// Writes one frame; `name` gives a port's name (for a new interface and the comment).
    /// The Enhanced Packet Block is encoded here into a reused buffer, in the section's (the
    /// machine's) byte order: flags option, comment option, end of options.
    pub fn write(&mut self, r: &Record, name: &dyn Fn(u16) -> String) -> Result<(), PcapngError> {
        let d = &r.decision;
        self.cache_name(d.ingress, name);
        for &(p, _) in d.egress() {
            self.cache_name(p, name);
        }
        let mut comment = std::mem::take(&mut self.comment);
        comment.clear();
        let names = &self.names;
        d.write_comment(&mut comment, &|p, out| {
            out.push_str(
                names
                    .get(usize::from(p))
                    .and_then(Option::as_deref)
                    .unwrap_or("?"),
            )
        });
        let data = r.bytes();
        let comment_len = comment.len().min(usize::from(u16::MAX) - 3);
        let size = 28
            + data.len().next_multiple_of(4)
            + 8 // flags option
            + 4
            + comment_len.next_multiple_of(4)
            + 4 // end of options
            + 4; // trailing length
        let result = self
            .rotate_for(size as u64)
            .and_then(|()| self.iface(r.port, name));
        let interface_id = match result {
            Ok(id) => id,
            Err(e) => {
                self.comment = comment;
                return Err(e);
            }
        };
        let b = &mut self.block;
        b.clear();
        let u32s = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_ne_bytes());
        let u16s = |b: &mut Vec<u8>, v: u16| b.extend_from_slice(&v.to_ne_bytes());
        let pad = |b: &mut Vec<u8>, n: usize| b.resize(b.len() + (n.next_multiple_of(4) - n), 0);
        u32s(b, 6); // Enhanced Packet Block
        u32s(b, size as u32);
        u32s(b, interface_id);
        u32s(b, (r.ts_ns >> 32) as u32);
        u32s(b, r.ts_ns as u32);
        u32s(b, data.len() as u32);
        u32s(b, r.orig_len);
        b.extend_from_slice(data);
        pad(b, data.len());
        u16s(b, 2); // epb_flags
        u16s(b, 4);
        u32s(b, r.dir.epb_flags());
        u16s(b, 1); // opt_comment
        u16s(b, comment_len as u16);
        b.extend_from_slice(&comment.as_bytes()[..comment_len]);
        pad(b, comment_len);
        u32s(b, 0); // opt_endofopt
        u32s(b, size as u32);
        self.comment = comment;
        debug_assert_eq!(self.block.len(), size);
        self.writer
            .get_mut()
            .write_all(&self.block)
            .map_err(PcapngError::Io)
    }

    /// Pushes what is buffered to the file or stream.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.get_mut().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Decision, Direction};
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn names(p: u16) -> String {
        format!("vf{p}")
    }

    fn record(port: Option<u16>, len: usize, ts: u64) -> Record {
        let mut r = Record::slot(len);
        r.ts_ns = ts;
        r.port = port;
        r.dir = Direction::Outbound;
        r.set_frame(&vec![0xab; len], len);
        r.decision = Decision {
            ingress: 1,
            drop: port.is_none().then_some("drop_vlan_filter"),
            ..Decision::default()
        };
        r
    }

    /// A packet as read back: interface id, timestamp ns, flags, comment.
    type Packet = (u32, u128, u32, String);

    /// (interface names, packets).
    fn read(path: &Path) -> (Vec<String>, Vec<Packet>) {
        let mut rd = PcapNgReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let (mut ifs, mut pkts) = (Vec::new(), Vec::new());
        while let Some(b) = rd.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => {
                    let name = i.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    });
                    assert!(i
                        .options
                        .contains(&InterfaceDescriptionOption::IfTsResol(9)));
                    ifs.push(name.unwrap());
                }
                Block::EnhancedPacket(e) => {
                    let mut flags = 0;
                    let mut comment = String::new();
                    for o in &e.options {
                        match o {
                            EnhancedPacketOption::Flags(f) => flags = *f,
                            EnhancedPacketOption::Comment(c) => comment = c.to_string(),
                            _ => {}
                        }
                    }
                    pkts.push((e.interface_id, e.timestamp.as_nanos(), flags, comment));
                }
                _ => {}
            }
        }
        (ifs, pkts)
    }

    #[test]
    fn interfaces_are_announced_once_and_packets_carry_time_flags_and_decision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pcapng");
        let mut out = PcapngOut::create(&path, 256, None).unwrap();
        out.write(&record(Some(3), 60, 1_700_000_000_123_456_789), &names)
            .unwrap();
        out.write(&record(None, 60, 1_700_000_000_223_456_789), &names)
            .unwrap();
        out.write(&record(Some(3), 1000, 1_700_000_000_323_456_789), &names)
            .unwrap();
        out.flush().unwrap();
        let (ifs, pkts) = read(&path);
        assert_eq!(ifs, ["vf3", "drops"]);
        assert_eq!(pkts.len(), 3);
        assert_eq!(pkts[0].0, 0);
        assert_eq!(pkts[0].1, 1_700_000_000_123_456_789);
        assert_eq!(pkts[0].2, 0b10);
        assert_eq!(pkts[0].3, "in vf1 q0");
        assert_eq!(
            (pkts[1].0, pkts[1].3.as_str()),
            (1, "in vf1 q0; dropped: drop_vlan_filter")
        );
        assert_eq!(pkts[2].0, 0);
    }

    #[test]
    fn a_limited_capture_is_a_ring_whose_total_stays_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.pcapng");
        let limit = MIN_LIMIT;
        let mut out = PcapngOut::create(&path, 1600, Some(limit)).unwrap();
        for i in 0..3000u64 {
            out.write(&record(Some((i % 3) as u16), 1500, i), &names)
                .unwrap();
        }
        out.flush().unwrap();
        let files = out.files();
        assert_eq!(files.len(), RING_FILES);
        let on_disk: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(on_disk.len(), RING_FILES, "old files are removed");
        let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
        assert!(total <= limit, "{total} bytes on disk, limit {limit}");
        // Every file stands alone: its interfaces, then packets that name them.
        let mut last = None;
        for f in &files {
            let (ifs, pkts) = read(f);
            assert_eq!(ifs, ["vf0", "vf1", "vf2"]);
            assert!(!pkts.is_empty());
            assert!(pkts.iter().all(|p| p.0 < 3));
            if let Some(prev) = last {
                assert_eq!(pkts[0].1, prev + 1, "no frame lost between files");
            }
            last = pkts.last().map(|p| p.1);
        }
        assert_eq!(last, Some(2999));
    }

    #[test]
    fn a_limit_below_one_mebibyte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = PcapngOut::create(&dir.path().join("x.pcapng"), 64, Some(1000)).err();
        assert!(matches!(e, Some(PcapngError::LimitTooSmall(1000))));
    }
}
