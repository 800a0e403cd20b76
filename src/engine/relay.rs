//! Both directions between the program's connection and the upstream:
//! half-close passed on each way, resets passed on each way, an idle
//! timeout, memory bounded by the two copy buffers.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::adapter::SmolStream;
use super::stats::Stats;

#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed normally.
    Closed,
    /// The program reset its connection; the upstream was reset too.
    ProgramReset,
    /// The upstream reset (or failed); the program got a reset.
    UpstreamReset,
    /// Nothing moved for the idle timeout; both sides were reset.
    Idle,
}

const BUF: usize = 64 * 1024;

#[derive(Clone, Copy)]
enum Side {
    Program,
    Upstream,
}

async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    reader_is_program: bool,
    last: &AtomicU64,
    epoch: Instant,
    bytes: &AtomicU64,
) -> Result<(), Side>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let (rside, wside) =
        if reader_is_program { (Side::Program, Side::Upstream) } else { (Side::Upstream, Side::Program) };
    let (rerr, werr) = (|_: io::Error| rside, |_: io::Error| wside);
    loop {
        let n = r.read(&mut buf).await.map_err(rerr)?;
        if n == 0 {
            w.shutdown().await.map_err(werr)?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await.map_err(werr)?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

pub async fn relay(
    mut program: SmolStream,
    mut upstream: TcpStream,
    leftover: Vec<u8>,
    idle: Duration,
    stats: &Arc<Stats>,
) -> End {
    if !leftover.is_empty() && program.write_all(&leftover).await.is_err() {
        let _ = upstream.set_zero_linger();
        return End::ProgramReset;
    }
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let result = {
        let (mut pr, mut pw) = tokio::io::split(&mut program);
        let (mut ur, mut uw) = upstream.split();
        let up = pump(&mut pr, &mut uw, true, &last, epoch, &stats.bytes_up);
        let down = pump(&mut ur, &mut pw, false, &last, epoch, &stats.bytes_down);
        let both = async { tokio::try_join!(up, down) };
        let watchdog = async {
            loop {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return;
                }
                tokio::time::sleep(idle - quiet).await;
            }
        };
        tokio::select! {
            r = both => Some(r),
            _ = watchdog => None,
        }
    };
    match result {
        Some(Ok(_)) => End::Closed,
        Some(Err(Side::Program)) => {
            let _ = upstream.set_zero_linger();
            End::ProgramReset
        }
        Some(Err(Side::Upstream)) => {
            program.abort_on_drop();
            End::UpstreamReset
        }
        None => {
            let _ = upstream.set_zero_linger();
            program.abort_on_drop();
            End::Idle
        }
    }
}
