//! Reach the head inside the lab namespace from the host's loopback, without routing anything
//! between them: a listener on 127.0.0.1 hands each connection to a thread that has entered the
//! namespace (sockets stay in the namespace they were created in) and copies bytes both ways.

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;

use anyhow::Context;

pub fn start(ns: &str, local_port: u16, target: &'static str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", local_port)).with_context(|| {
        format!("cannot listen on 127.0.0.1:{local_port} (in use? pass --port)")
    })?;
    let ns_path = format!("/var/run/netns/{ns}");
    let ns_file = std::fs::File::open(&ns_path).with_context(|| ns_path.clone())?;
    let (req_tx, req_rx) = mpsc::channel::<mpsc::Sender<std::io::Result<TcpStream>>>();
    thread::spawn(move || {
        if let Err(e) = nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("xtask proxy: cannot enter namespace: {e}");
            return;
        }
        for reply in req_rx {
            let _ = reply.send(TcpStream::connect(target));
        }
    });
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (tx, rx) = mpsc::channel();
            if req_tx.send(tx).is_err() {
                return;
            }
            let Ok(Ok(upstream)) = rx.recv() else {
                continue;
            };
            let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                continue;
            };
            thread::spawn(move || pipe(client, upstream));
            thread::spawn(move || pipe(u2, c2));
        }
    });
    Ok(())
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}
