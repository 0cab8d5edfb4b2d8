//! Protocol detection on the first bytes of a connection: is it TLS, and does the ClientHello
//! offer our mesh ALPN token? Is it HTTP ([`http`])? Pure parsers over untrusted bytes: they
//! never panic and never read past the slice.

mod http;

pub use http::{detect_http, HttpDetection, H2_PREFACE, MAX_REQUEST_LINE};

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// Not a TLS handshake record: plaintext (or some other protocol).
    NotTls,
    /// A TLS ClientHello; `alpn` lists the offered protocols (empty if none or unreadable).
    Tls {
        /// Offered ALPN protocols, in order.
        alpn: Vec<Vec<u8>>,
    },
}

impl Detection {
    /// Whether a TLS ClientHello offers `token`.
    pub fn offers(&self, token: &[u8]) -> bool {
        matches!(self, Detection::Tls { alpn } if alpn.iter().any(|p| p == token))
    }
}

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const EXT_ALPN: u16 = 16;
/// Largest TLS record body (plaintext) a ClientHello record may have.
const MAX_RECORD: usize = 16384 + 2048;

/// Bytes to buffer at most before deciding.
pub const MAX_PEEK: usize = 5 + MAX_RECORD;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n.into())
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n.into())
    }
}

/// Looks at the first bytes of a connection.
pub fn detect(bytes: &[u8]) -> Detection {
    if bytes.is_empty() {
        return Detection::NeedMore;
    }
    if bytes[0] != HANDSHAKE {
        return Detection::NotTls;
    }
    if bytes.len() < 5 {
        return Detection::NeedMore;
    }
    // Record version major is always 3 for SSLv3 .. TLS 1.3.
    if bytes[1] != 3 {
        return Detection::NotTls;
    }
    let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if len == 0 || len > MAX_RECORD {
        return Detection::NotTls;
    }
    let Some(body) = bytes.get(5..5 + len) else {
        return Detection::NeedMore;
    };
    let mut r = Reader { buf: body };
    if r.u8() != Some(CLIENT_HELLO) {
        return Detection::NotTls;
    }
    // A ClientHello fragmented over several records is TLS whose ALPN we cannot see here.
    let alpn = match r.u24() {
        Some(hello_len) if hello_len <= r.buf.len() => {
            r.buf = &r.buf[..hello_len];
            client_hello_alpn(&mut r).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    Detection::Tls { alpn }
}

/// Whether `bytes`, on which [`detect`] could not decide, start like a TLS handshake record
/// (content type 0x16, version 0x03 0x00..=0x04): a ClientHello cut short, not plaintext.
pub fn truncated_client_hello(bytes: &[u8]) -> bool {
    matches!(bytes, [HANDSHAKE, 3, minor, ..] if *minor <= 4)
        && detect(bytes) == Detection::NeedMore
}

fn client_hello_alpn(r: &mut Reader<'_>) -> Option<Vec<Vec<u8>>> {
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut exts = Reader { buf: r.vec16()? };
    while !exts.buf.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        if ty == EXT_ALPN {
            let mut list = Reader { buf: data };
            let mut names = Reader { buf: list.vec16()? };
            let mut out = Vec::new();
            while !names.buf.is_empty() {
                // RFC 7301: empty protocol names MUST NOT be sent; such a list is unreadable.
                out.push(names.vec8().filter(|n| !n.is_empty())?.to_vec());
            }
            return Some(out);
        }
    }
    Some(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record with the given ALPN list.
    fn hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut ext = Vec::new();
        if !alpn.is_empty() {
            let mut names = Vec::new();
            for p in alpn {
                names.push(p.len() as u8);
                names.extend_from_slice(p);
            }
            ext.extend_from_slice(&EXT_ALPN.to_be_bytes());
            ext.extend_from_slice(&((names.len() + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(names.len() as u16).to_be_bytes());
            ext.extend_from_slice(&names);
        }
        // A dummy extension before ALPN to exercise skipping.
        let mut exts = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00];
        exts.extend_from_slice(&ext);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn plaintext_is_not_tls() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detection::NotTls);
        assert_eq!(detect(b""), Detection::NeedMore);
        assert_eq!(detect(&[0x16, 2, 0, 0, 5]), Detection::NotTls);
    }

    #[test]
    fn finds_alpn_and_needs_whole_record() {
        let rec = hello(&[b"h2", b"svidcar/1"]);
        let d = detect(&rec);
        assert!(d.offers(b"svidcar/1"));
        assert!(d.offers(b"h2"));
        for cut in 1..rec.len() {
            assert_eq!(detect(&rec[..cut]), Detection::NeedMore, "cut at {cut}");
        }
        let plain = detect(&hello(&[]));
        assert_eq!(plain, Detection::Tls { alpn: vec![] });
        assert!(!plain.offers(b"svidcar/1"));
    }

    #[test]
    fn a_cut_short_hello_is_told_from_plaintext() {
        let rec = hello(&[b"svidcar/1"]);
        for cut in 3..rec.len() {
            assert!(truncated_client_hello(&rec[..cut]), "cut at {cut}");
        }
        // Too short to be a record header, complete, or not a TLS record at all.
        assert!(!truncated_client_hello(&rec[..2]));
        assert!(!truncated_client_hello(&rec));
        assert!(!truncated_client_hello(b"GET / HTTP/1.1\r\n"));
        assert!(!truncated_client_hello(&[0x16, 3, 9, 0]));
        assert!(!truncated_client_hello(&[0x16, 2, 1, 0]));
        assert!(!truncated_client_hello(b""));
    }

    /// Found by the `detect` fuzz target: a zero-length name in the ALPN list came back as an
    /// empty protocol.
    #[test]
    fn empty_alpn_name_makes_the_list_unreadable() {
        assert_eq!(detect(&hello(&[b""])), Detection::Tls { alpn: vec![] });
        let d = detect(&hello(&[b"svidcar/1", b""]));
        assert_eq!(d, Detection::Tls { alpn: vec![] });
        assert!(!d.offers(b"svidcar/1"));
        assert!(!d.offers(b""));
    }

    #[test]
    fn every_truncation_and_mutation_is_safe() {
        let rec = hello(&[b"svidcar/1"]);
        for i in 5..rec.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut m = rec.clone();
                m[i] = v;
                let _ = detect(&m);
            }
        }
    }

    #[test]
    fn rustls_client_hello_is_parsed() {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"svidcar/1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("example.org").expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("write");
        assert!(detect(&out).offers(b"svidcar/1"));
    }
}
