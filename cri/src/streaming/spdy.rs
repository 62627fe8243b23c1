//! SPDY/3.1 framing as Kubernetes streaming speaks it (the dialect of moby/spdystream,
//! which client-go, crictl and the kubelet use): control frames for opening, replying
//! to and resetting streams, data frames, and header blocks compressed with one zlib
//! stream per direction primed with the SPDY dictionary. No flow control: spdystream
//! neither sends nor honours WINDOW_UPDATE, so neither do we.

use std::sync::Arc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::dictionary::HEADER_DICTIONARY;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 0x01;
/// The largest frame we take: far above what clients send (a data frame of client-go
/// is at most 32 KiB), far below what would let a peer make us hold much memory.
const MAX_FRAME: usize = 1 << 20;
/// What the reader buffers of the client's frames.
const READ_BUFFER: usize = 256 << 10;
/// A decompressed header block is a handful of short headers.
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// The data frames we send: large enough that framing costs little against the copy.
pub(super) const DATA_CHUNK: usize = 256 << 10;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub(super) const RST_PROTOCOL_ERROR: u32 = 1;
pub(super) const RST_REFUSED_STREAM: u32 = 3;

/// Why a SPDY session ended.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("the connection failed")]
    Io(#[from] std::io::Error),
    #[error("the client broke the SPDY protocol: {0}")]
    Protocol(String),
    #[error("a header block does not decompress")]
    Inflate(#[source] flate2::DecompressError),
    #[error("a header block does not compress")]
    Deflate(#[source] flate2::CompressError),
}

/// The two halves of a session on `conn`, whose request head (with `rest`, the bytes
/// read past it) was already read.
pub(super) type Session =
    (Reader<tokio::io::Chain<std::io::Cursor<Vec<u8>>, tokio::net::tcp::OwnedReadHalf>>, Arc<Writer<tokio::net::tcp::OwnedWriteHalf>>);

/// Negotiates one of `protocols` with the client and switches the connection to
/// SPDY; None when refused (the client was told why) or the client left.
pub(super) async fn upgrade(mut conn: tokio::net::TcpStream, req: super::http::Request, protocols: &[&'static str]) -> Option<Session> {
    let proto = super::http::negotiate(&mut conn, &req.protocols, protocols).await?;
    super::http::switch(&mut conn, proto).await.ok()?;
    let (rh, wh) = conn.into_split();
    Some((Reader::new(std::io::Cursor::new(req.rest).chain(rh)), Writer::new(wh)))
}

/// A header block: lowercase names, values with NULs between repeated ones.
pub(super) type Headers = Vec<(String, String)>;

/// Looks up header `name` (lowercase).
pub(super) fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// A frame as read from the client; what minipod ignores is read and dropped.
#[derive(Debug)]
pub(super) enum Frame {
    SynStream {
        stream: u32,
        headers: Headers,
    },
    RstStream {
        stream: u32,
    },
    Ping(u32),
    GoAway,
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// SETTINGS, HEADERS, WINDOW_UPDATE, SYN_REPLY (we open no streams) and unknown
    /// types: nothing to do.
    Ignored,
}

/// The client's half: frames in, header blocks inflated with the shared stream.
pub(super) struct Reader<R> {
    /// Buffered: a client's data frames are small (32 KiB from client-go), and each
    /// is a head and a body; one read takes several.
    r: tokio::io::BufReader<R>,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub(super) fn new(r: R) -> Self {
        Self { r: tokio::io::BufReader::with_capacity(READ_BUFFER, r), inflate: Decompress::new(true) }
    }

    /// The next frame, or None at a clean end of the connection.
    pub(super) async fn next(&mut self) -> Result<Option<Frame>, SpdyError> {
        let mut head = [0u8; 8];
        match self.r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::Protocol(format!("a frame of {len} bytes (at most {MAX_FRAME} are taken)")));
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data { stream, fin: flags & FLAG_FIN != 0, data: body }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(SpdyError::Protocol(format!("SPDY version {version} (only 3 is spoken)")));
        }
        let word = |at: usize| -> Result<u32, SpdyError> {
            body.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| SpdyError::Protocol(format!("a control frame of {len} bytes is too short")))
        };
        Ok(Some(match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM => {
                let stream = word(0)? & 0x7fff_ffff;
                let headers = self.headers(body.get(10..).unwrap_or_default())?;
                Frame::SynStream { stream, headers }
            }
            RST_STREAM => Frame::RstStream { stream: word(0)? & 0x7fff_ffff },
            PING => Frame::Ping(word(0)?),
            GOAWAY => Frame::GoAway,
            HEADERS => {
                // Inflated all the same: the zlib stream is shared by every block.
                self.headers(body.get(4..).unwrap_or_default())?;
                Frame::Ignored
            }
            SYN_REPLY => {
                self.headers(body.get(4..).unwrap_or_default())?;
                Frame::Ignored
            }
            SETTINGS | WINDOW_UPDATE => Frame::Ignored,
            _ => Frame::Ignored,
        }))
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(256);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(256));
            }
            let before = self.inflate.total_in();
            match self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(HEADER_DICTIONARY).map_err(SpdyError::Inflate)?;
                }
                Err(e) => return Err(SpdyError::Inflate(e)),
            }
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used.min(input.len())..];
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Protocol(format!("a header block inflates past {MAX_HEADER_BLOCK} bytes")));
            }
            // All input taken and room left over: the block is complete.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        parse_headers(&out)
    }
}

fn parse_headers(b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Protocol("a header block is cut short".into());
    let mut at = 0usize;
    let word = |at: &mut usize| -> Result<usize, SpdyError> {
        let w = b.get(*at..*at + 4).ok_or_else(bad)?;
        *at += 4;
        Ok(u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize)
    };
    let count = word(&mut at)?;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = word(&mut at)?;
        let name = b.get(at..at + n).ok_or_else(bad)?;
        at += n;
        let n = word(&mut at)?;
        let value = b.get(at..at + n).ok_or_else(bad)?;
        at += n;
        out.push((String::from_utf8_lossy(name).to_ascii_lowercase(), String::from_utf8_lossy(value).into_owned()));
    }
    Ok(out)
}

fn header_block(h: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(&(h.len() as u32).to_be_bytes());
    for (name, value) in h {
        b.extend_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(value.len() as u32).to_be_bytes());
        b.extend_from_slice(value.as_bytes());
    }
    b
}

struct WriteHalf<W> {
    w: W,
    deflate: Compress,
}

/// Our half, shared by every stream of the session: one frame at a time, header
/// blocks deflated in the order they go out.
pub(super) struct Writer<W> {
    inner: Mutex<WriteHalf<W>>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(super) fn new(w: W) -> Arc<Self> {
        // Best compression, as spdystream's writer: header blocks are tiny.
        let mut deflate = Compress::new(Compression::best(), true);
        // A fresh compressor takes a dictionary before its first byte; it cannot fail.
        let _ = deflate.set_dictionary(HEADER_DICTIONARY);
        Arc::new(Self { inner: Mutex::new(WriteHalf { w, deflate }) })
    }

    /// Accepts stream `stream` (SYN_REPLY with no headers).
    pub(super) async fn reply(&self, stream: u32) -> Result<(), SpdyError> {
        let mut half = self.inner.lock().await;
        let block = deflate(&mut half.deflate, &header_block(&[]))?;
        let mut frame = control(SYN_REPLY, 0, 4 + block.len());
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&block);
        half.w.write_all(&frame).await?;
        Ok(())
    }

    /// Sends `data` on `stream`, in frames of at most [`DATA_CHUNK`] bytes.
    pub(super) async fn data(&self, stream: u32, data: &[u8]) -> Result<(), SpdyError> {
        let mut half = self.inner.lock().await;
        for chunk in data.chunks(DATA_CHUNK) {
            half.w.write_all(&data_head(stream, 0, chunk.len())).await?;
            half.w.write_all(chunk).await?;
        }
        Ok(())
    }

    /// Ends our side of `stream` (an empty data frame with FIN).
    pub(super) async fn fin(&self, stream: u32) -> Result<(), SpdyError> {
        let mut half = self.inner.lock().await;
        half.w.write_all(&data_head(stream, FLAG_FIN, 0)).await?;
        Ok(())
    }

    pub(super) async fn reset(&self, stream: u32, status: u32) -> Result<(), SpdyError> {
        let mut half = self.inner.lock().await;
        let mut frame = control(RST_STREAM, 0, 8);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(&status.to_be_bytes());
        half.w.write_all(&frame).await?;
        Ok(())
    }

    pub(super) async fn pong(&self, id: u32) -> Result<(), SpdyError> {
        let mut half = self.inner.lock().await;
        let mut frame = control(PING, 0, 4);
        frame.extend_from_slice(&id.to_be_bytes());
        half.w.write_all(&frame).await?;
        Ok(())
    }

    pub(super) async fn shutdown(&self) {
        let _ = self.inner.lock().await.w.shutdown().await;
    }
}

fn control(kind: u16, flags: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + len);
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    f
}

fn data_head(stream: u32, flags: u8, len: usize) -> [u8; 8] {
    let s = (stream & 0x7fff_ffff).to_be_bytes();
    let l = (len as u32).to_be_bytes();
    [s[0], s[1], s[2], s[3], flags, l[1], l[2], l[3]]
}

fn deflate(c: &mut Compress, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let mut input = input;
    loop {
        let before = c.total_in();
        let status = c.compress_vec(input, &mut out, FlushCompress::Sync).map_err(SpdyError::Deflate)?;
        input = &input[((c.total_in() - before) as usize).min(input.len())..];
        // A sync flush is done when it left room in the output.
        if input.is_empty() && out.len() < out.capacity() || status == Status::StreamEnd {
            return Ok(out);
        }
        out.reserve(out.capacity().max(64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_one_of_the_spdy_3_draft() {
        let mut c = Compress::new(Compression::best(), true);
        assert_eq!(HEADER_DICTIONARY.len(), 1423);
        assert_eq!(c.set_dictionary(HEADER_DICTIONARY).unwrap(), 0xe3c6_a7c2, "Adler-32 of the dictionary");
    }

    #[tokio::test]
    async fn header_blocks_and_frames_read_back_as_written() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let w = Writer::new(client);
        // A SYN_STREAM as a client writes it: stream, associated stream, priority, block.
        let mut deflater = Compress::new(Compression::best(), true);
        deflater.set_dictionary(HEADER_DICTIONARY).unwrap();
        for (stream, kind) in [(1u32, "error"), (3, "stdout")] {
            let block = deflate(&mut deflater, &header_block(&[("streamtype", kind), ("port", "80")])).unwrap();
            let mut f = control(SYN_STREAM, 0, 10 + block.len());
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&block);
            w.inner.lock().await.w.write_all(&f).await.unwrap();
        }
        w.data(3, b"hello").await.unwrap();
        w.fin(3).await.unwrap();
        w.pong(7).await.unwrap();
        w.shutdown().await;
        let mut r = Reader::new(server);
        for want in ["error", "stdout"] {
            match r.next().await.unwrap() {
                Some(Frame::SynStream { headers, .. }) => {
                    assert_eq!(header(&headers, "streamtype"), Some(want));
                    assert_eq!(header(&headers, "port"), Some("80"));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Data { stream: 3, fin: false, data }) if data == b"hello"));
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Data { stream: 3, fin: true, .. })));
        assert!(matches!(r.next().await.unwrap(), Some(Frame::Ping(7))));
        assert!(r.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_frame_too_large_is_refused_before_it_is_read() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&data_head(1, 0, 0xff_ffff)).await.unwrap();
        assert!(matches!(Reader::new(server).next().await, Err(SpdyError::Protocol(_))));
    }
}
