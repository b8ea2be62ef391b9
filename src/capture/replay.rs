//! The frames of a capture file, for `sriov-emu replay`: pcap (either byte order, micro- or
//! nanosecond) or pcapng (Enhanced and Simple Packet Blocks), Ethernet only.

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;
use std::io::Read;
use std::path::Path;

/// Why a capture file cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a pcap or pcapng file")]
    NotACapture { path: String },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("{path}: link type {linktype:?} is not Ethernet")]
    LinkType { path: String, linktype: DataLink },
}

/// The frames of a capture, and how many of them were cut by its snap length (replayed as
/// captured).
#[derive(Debug, Default)]
pub struct Frames {
    pub frames: Vec<Vec<u8>>,
    pub truncated: usize,
}

/// Reads every frame of the pcap or pcapng file at `path`.
pub fn read_frames(path: &Path) -> Result<Frames, ReplayError> {
    let name = path.display().to_string();
    let data = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut v = Vec::new();
            f.read_to_end(&mut v).map(|_| v)
        })
        .map_err(|source| ReplayError::Open {
            path: name.clone(),
            source,
        })?;
    let read = |source| ReplayError::Read {
        path: name.clone(),
        source,
    };
    let mut out = Frames::default();
    let magic = data.get(..4).unwrap_or_default();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(&data[..]).map_err(read)?;
        while let Some(b) = r.next_block() {
            match b.map_err(read)? {
                Block::InterfaceDescription(i) if i.linktype != DataLink::ETHERNET => {
                    return Err(ReplayError::LinkType {
                        path: name,
                        linktype: i.linktype,
                    })
                }
                Block::EnhancedPacket(e) => {
                    out.truncated += usize::from((e.data.len() as u32) < e.original_len);
                    out.frames.push(e.data.into_owned());
                }
                Block::SimplePacket(p) => {
                    out.truncated += usize::from((p.data.len() as u32) < p.original_len);
                    out.frames.push(p.data.into_owned());
                }
                _ => {}
            }
        }
        return Ok(out);
    }
    let pcap_magics: [[u8; 4]; 4] = [
        [0xd4, 0xc3, 0xb2, 0xa1],
        [0xa1, 0xb2, 0xc3, 0xd4],
        [0x4d, 0x3c, 0xb2, 0xa1],
        [0xa1, 0xb2, 0x3c, 0x4d],
    ];
    if !pcap_magics.iter().any(|m| m == magic) {
        return Err(ReplayError::NotACapture { path: name });
    }
    let mut r = PcapReader::new(&data[..]).map_err(read)?;
    let linktype = r.header().datalink;
    if linktype != DataLink::ETHERNET {
        return Err(ReplayError::LinkType {
            path: name,
            linktype,
        });
    }
    while let Some(p) = r.next_packet() {
        let p = p.map_err(read)?;
        out.truncated += usize::from((p.data.len() as u32) < p.orig_len);
        out.frames.push(p.data.into_owned());
    }
    Ok(out)
}
