//! The I/O side of protocol detection: read a client's first bytes until a pure detector
//! (`detect`) can decide, the buffer limit is reached, the client stops sending or the
//! deadline passes. The bytes read stay in `buf`, to be replayed.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

/// Reads into `buf` until `decide` returns a verdict; `None` when it never did (limit, end of
/// stream or deadline first).
pub(crate) async fn read_until<S, R>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
    deadline: Instant,
    decide: impl Fn(&[u8]) -> Option<R>,
) -> std::io::Result<Option<R>>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(verdict) = decide(buf) {
            return Ok(Some(verdict));
        }
        if buf.len() >= limit {
            return Ok(None);
        }
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return Ok(None),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn reads_until_decided_and_keeps_the_bytes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"ab").await.unwrap();
        client.write_all(b"cd").await.unwrap();
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = read_until(&mut server, &mut buf, 100, deadline, |b| {
            (b.len() >= 3).then_some(b.len())
        })
        .await
        .unwrap();
        assert!(got.is_some_and(|n| n >= 3));
        assert!(buf.starts_with(b"abc"));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_and_the_limit_end_undecided() {
        let (_client, mut server) = tokio::io::duplex(64);
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        let never = |_: &[u8]| None::<()>;
        assert_eq!(
            read_until(&mut server, &mut buf, 100, deadline, never)
                .await
                .unwrap(),
            None
        );
        let mut full = vec![0u8; 8];
        assert_eq!(
            read_until(&mut server, &mut full, 8, deadline, never)
                .await
                .unwrap(),
            None
        );
    }
}
