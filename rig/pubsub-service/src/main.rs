//! `pubsub-service --host H --port P`: the service as a process (for containers and manual
//! use). Runs until SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};

fn usage() -> ! {
    eprintln!("usage: pubsub-service [--host HOST] [--port PORT]   (defaults 127.0.0.1 8085)");
    std::process::exit(2)
}

fn main() {
    let mut host: IpAddr = IpAddr::from([127, 0, 0, 1]);
    let mut port: u16 = 8085;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage())
        };
        match flag.as_str() {
            "--host" => {
                let v = value();
                host = v.parse().unwrap_or_else(|_| {
                    eprintln!("--host {v}: expected an IP address such as 0.0.0.0");
                    std::process::exit(2)
                })
            }
            "--port" => {
                let v = value();
                port = v.parse().unwrap_or_else(|_| {
                    eprintln!("--port {v}: expected a port number");
                    std::process::exit(2)
                })
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pubsub-service: cannot start the tokio runtime: {e}");
            std::process::exit(1)
        }
    };
    let result = runtime.block_on(async {
        let service = pubsub_service::PubsubService::start(SocketAddr::new(host, port)).await?;
        println!(
            "pubsub-service listening on {} (export PUBSUB_EMULATOR_HOST={})",
            service.local_addr(),
            service.emulator_host()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        drop(service);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        std::io::Result::Ok(())
    });
    if let Err(e) = result {
        eprintln!(
            "pubsub-service on {host}:{port}: {e} (is the port in use? pick another with --port)"
        );
        std::process::exit(1);
    }
}
