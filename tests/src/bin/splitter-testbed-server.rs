//! The HTTP server the test bed's backends run: HTTP/1.1 with keep-alive, a thread per
//! connection, and an `X-Served-By` header naming the version. It prints `ready` once it
//! listens and exits by itself after `--max-seconds`, so a crashed test never leaves it behind.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    process::ExitCode,
    thread,
    time::Duration,
};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut name, mut max_seconds) = (None, None, 600u64);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--name" => name = args.next(),
            "--max-seconds" => {
                max_seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(max_seconds)
            }
            other => {
                eprintln!("splitter-testbed-server: unknown argument `{other}`");
                return ExitCode::FAILURE;
            }
        }
    }
    let (Some(listen), Some(name)) = (listen, name) else {
        eprintln!(
            "usage: splitter-testbed-server --listen ADDR:PORT --name NAME [--max-seconds N]"
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
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        thread::spawn(move || serve(stream, &name));
    }
    ExitCode::SUCCESS
}

fn serve(stream: TcpStream, name: &str) {
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
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
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Served-By: {name}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}
