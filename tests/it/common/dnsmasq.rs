//! A real DNS server for one test: Debian's dnsmasq on 127.0.0.1 at a free port, answering
//! only the records the test gives it (no upstream, no hosts file), stopped when dropped.
//! Names under `.test` that it does not know get NXDOMAIN.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// `records`: (name, address) pairs; a name may appear several times.
    pub fn start(records: &[(&str, &str)]) -> Dnsmasq {
        // A port picked free can be taken again before dnsmasq binds it: retry then.
        for _ in 0..5 {
            if let Some(dns) = Dnsmasq::try_start(records) {
                return dns;
            }
        }
        panic!("dnsmasq did not start on a free port");
    }

    fn try_start(records: &[(&str, &str)]) -> Option<Dnsmasq> {
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free UDP port");
        let mut cmd = Command::new(
            ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .expect("dnsmasq is needed (scripts/test installs dnsmasq-base)"),
        );
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--pid-file=",
            "--local=/test/",
            // Plain names (`rollcall-0`) get NXDOMAIN instead of REFUSED; nothing is ever
            // forwarded to this dead loopback port.
            "--domain-needed",
            "--server=127.0.0.1#9",
        ])
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        for (name, addr) in records {
            cmd.arg(format!("--host-record={name},{addr}"));
        }
        let mut child = cmd.spawn().expect("start dnsmasq");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Ready when the port is taken and our dnsmasq is still running (not a failed bind).
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if UdpSocket::bind(addr).is_err() {
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(Some(_)) = child.try_wait() {
                    return None;
                }
                return Some(Dnsmasq { child, addr });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
