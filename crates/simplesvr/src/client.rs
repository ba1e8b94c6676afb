//! `simplesvr client ip:port [COMMAND...]`: a line client so nobody needs
//! telnet. With a command it sends that one line and prints the reply;
//! without, it is interactive (stdin lines out, reply lines back).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

pub fn run(addr: &str, command: &[String]) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("cannot use the connection to {addr}: {e}"))?;
    let mut reader = BufReader::new(stream);
    if !command.is_empty() {
        let line = command.join(" ");
        writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let _ = reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)));
        let mut reply = String::new();
        match reader.read_line(&mut reply) {
            Ok(0) => return Err(format!("{addr} closed the connection")),
            Ok(_) => print!("{reply}"),
            Err(e) => return Err(format!("no reply from {addr}: {e}")),
        }
        return if reply.starts_with("ERR") {
            Err("the server answered ERR".into())
        } else {
            Ok(())
        };
    }
    eprintln!("connected to {addr}; type HELP, Ctrl-D to quit");
    let printer = std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    print!("{line}");
                    let _ = std::io::stdout().flush();
                }
            }
        }
    });
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        if writer.write_all(format!("{line}\n").as_bytes()).is_err() {
            break;
        }
    }
    // End of input: the server answers what it has, then closes.
    let _ = writer.shutdown(std::net::Shutdown::Write);
    let _ = printer.join();
    Ok(())
}
