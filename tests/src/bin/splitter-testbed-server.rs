//! The HTTP server the test bed's backends run: HTTP/1.1 with keep-alive, a thread per
//! connection, and an `X-Served-By` header naming the version. It prints `ready` once it
//! listens and exits by itself after `--max-seconds`, so a crashed test never leaves it behind.
//! Faults for the telemetry tests: `--delay-ms N` before each response (with `--slow-every M`,
//! only before every Mth: a slow tail), `--error-every N`
//! answers every Nth request with a 500, `--reset-every N` resets the connection (RST) instead
//! of answering every Nth request. `GET /metrics` answers in the Prometheus text format with
//! the model-level counters a PromQL gate reads: `model_predictions_total`, and
//! `model_low_confidence_total`, which `--low-confidence-every N` raises on every Nth
//! prediction. Scrapes are not predictions and never fault. `GET /stream?ms=N` streams a
//! chunked response over N ms (a chunk every 50 ms, the last chunk written on its own), the
//! way a generative model streams its tokens (`--first-token-ms N`: its first chunk after N ms).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

#[derive(Clone, Copy, Default)]
struct Faults {
    delay: Duration,
    /// With a delay: only every Nth response waits it (a slow tail), 0 for every one.
    slow_every: u64,
    error_every: u64,
    reset_every: u64,
    low_confidence_every: u64,
    /// Before a streamed response's first chunk (its headers go at once): the time to first
    /// token of a generative model.
    first_token: Duration,
}

/// What the server has answered, for `/metrics`.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    low_confidence: AtomicU64,
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut name, mut max_seconds) = (None, None, 600u64);
    let mut faults = Faults::default();
    while let Some(arg) = args.next() {
        let mut number = || args.next().and_then(|s| s.parse::<u64>().ok());
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--name" => name = args.next(),
            "--max-seconds" => max_seconds = number().unwrap_or(max_seconds),
            "--delay-ms" => faults.delay = Duration::from_millis(number().unwrap_or(0)),
            "--slow-every" => faults.slow_every = number().unwrap_or(0),
            "--error-every" => faults.error_every = number().unwrap_or(0),
            "--reset-every" => faults.reset_every = number().unwrap_or(0),
            "--low-confidence-every" => faults.low_confidence_every = number().unwrap_or(0),
            "--first-token-ms" => faults.first_token = Duration::from_millis(number().unwrap_or(0)),
            other => {
                eprintln!("splitter-testbed-server: unknown argument `{other}`");
                return ExitCode::FAILURE;
            }
        }
    }
    let (Some(listen), Some(name)) = (listen, name) else {
        eprintln!(
            "usage: splitter-testbed-server --listen ADDR:PORT --name NAME [--max-seconds N] [--delay-ms N [--slow-every N]] [--error-every N] [--reset-every N] [--low-confidence-every N] [--first-token-ms N]"
        );
        return ExitCode::FAILURE;
    };
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("splitter-testbed-server: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(max_seconds));
        std::process::exit(0);
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    let counts = Arc::new(Counts::default());
    for stream in listener.incoming().flatten() {
        let (name, counts) = (name.clone(), Arc::clone(&counts));
        thread::spawn(move || serve(stream, &name, faults, &counts));
    }
    ExitCode::SUCCESS
}

fn serve(stream: TcpStream, name: &str, faults: Faults, counts: &Counts) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let body = format!("{name}\n");
    loop {
        let mut close = false;
        let mut line = String::new();
        // Request line, then headers up to the empty line.
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let scrape = line.starts_with("GET /metrics ");
        let stream_ms = line
            .strip_prefix("GET /stream?ms=")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|ms| ms.parse::<u64>().ok());
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if header == "connection: close" {
                close = true;
            }
        }
        if scrape {
            let text = format!(
                "# TYPE model_predictions_total counter\nmodel_predictions_total {}\n# TYPE model_low_confidence_total counter\nmodel_low_confidence_total {}\n",
                counts.requests.load(Ordering::SeqCst),
                counts.low_confidence.load(Ordering::SeqCst)
            );
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{text}",
                text.len(),
                if close { "close" } else { "keep-alive" }
            );
            if writer.write_all(response.as_bytes()).is_err() || close {
                return;
            }
            continue;
        }
        if let Some(ms) = stream_ms {
            let over = Duration::from_millis(ms);
            if stream_chunks(&mut writer, name, faults.first_token, over).is_err() || close {
                return;
            }
            continue;
        }
        let n = counts.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if faults.low_confidence_every > 0 && n.is_multiple_of(faults.low_confidence_every) {
            counts.low_confidence.fetch_add(1, Ordering::SeqCst);
        }
        if faults.reset_every > 0 && n.is_multiple_of(faults.reset_every) {
            reset(&writer);
            return;
        }
        if faults.slow_every == 0 || n.is_multiple_of(faults.slow_every) {
            thread::sleep(faults.delay);
        }
        let status = if faults.error_every > 0 && n.is_multiple_of(faults.error_every) {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Served-By: {name}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// Between two chunks of a streamed response.
const CHUNK_EVERY: Duration = Duration::from_millis(50);

/// A chunked response: its headers at once, the first chunk after `first_token` (or
/// `CHUNK_EVERY`), then a chunk every `CHUNK_EVERY` over `over`, then the last chunk in a write
/// of its own.
fn stream_chunks(
    writer: &mut TcpStream,
    name: &str,
    first_token: Duration,
    over: Duration,
) -> std::io::Result<()> {
    writer.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nX-Served-By: {name}\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let chunks = (over.as_millis() / CHUNK_EVERY.as_millis()).max(1);
    for i in 0..chunks {
        thread::sleep(if i == 0 && !first_token.is_zero() {
            first_token
        } else {
            CHUNK_EVERY
        });
        let chunk = format!("{name} {i}\n");
        writer.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())?;
    }
    writer.write_all(b"0\r\n\r\n")
}

/// Closes the connection with a RST (SO_LINGER 0) when the caller drops it.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct that lives across the call.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
