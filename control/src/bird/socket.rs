//! A client of BIRD's control socket, reading its documented reply codes (BIRD's
//! `doc/reply_codes`): each line is `CODE-text` (more follows), `CODE text` (the last line of
//! the reply) or ` text` (continues the previous code); `0xxx` is success, `8xxx` a run-time
//! and `9xxx` a parse error. Replies are bounded in size and time.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// Longest reply read (`show protocols all` of a few hundred sessions is well under it).
pub const REPLY_MAX: usize = 16 << 20;
/// How long a reply may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The socket could not be reached or broke.
    #[error("BIRD's control socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// BIRD answered with an error code.
    #[error("BIRD refused ({code}): {message}")]
    Refused {
        /// The reply code (8xxx, 9xxx).
        code: u16,
        /// BIRD's message.
        message: String,
    },
    /// The reply is not BIRD's protocol, or too long.
    #[error("BIRD's reply: {0}")]
    Protocol(String),
}

/// One line of a reply, with the code it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Reply code.
    pub code: u16,
    /// Text after the code.
    pub text: String,
}

/// A connection to BIRD's control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    path: String,
}

impl Client {
    /// Connects and reads BIRD's welcome (`0001`).
    pub fn connect(path: &Path) -> Result<Self, SocketError> {
        let name = path.display().to_string();
        let io = |source| SocketError::Io { path: name.clone(), source };
        let stream = UnixStream::connect(path).map_err(io)?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let mut client = Self { reader: BufReader::new(stream), path: name };
        let welcome = client.read_reply()?;
        if welcome.first().map(|l| l.code) != Some(1) {
            return Err(SocketError::Protocol(format!("no welcome: {welcome:?}")));
        }
        Ok(client)
    }

    /// Sends one command and returns its reply's lines; an error code is [`SocketError::Refused`].
    pub fn command(&mut self, command: &str) -> Result<Vec<Line>, SocketError> {
        if command.contains('\n') {
            return Err(SocketError::Protocol("a command is one line".into()));
        }
        let path = self.path.clone();
        let stream = self.reader.get_mut();
        stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|source| SocketError::Io { path, source })?;
        let lines = self.read_reply()?;
        if let Some(l) = lines.iter().find(|l| l.code >= 8000) {
            let message = lines
                .iter()
                .filter(|m| m.code == l.code)
                .map(|m| m.text.trim())
                .collect::<Vec<_>>()
                .join("\n");
            return Err(SocketError::Refused { code: l.code, message });
        }
        Ok(lines)
    }

    /// `configure check "FILE"`: whether BIRD would take the file.
    pub fn check(&mut self, file: &Path) -> Result<(), SocketError> {
        self.command(&format!("configure check {}", quoted(file)?)).map(drop)
    }

    /// `configure "FILE"`: BIRD reconfigures with the file.
    pub fn configure(&mut self, file: &Path) -> Result<(), SocketError> {
        self.command(&format!("configure {}", quoted(file)?)).map(drop)
    }

    /// Reads one reply: lines until one whose code is followed by a space.
    fn read_reply(&mut self) -> Result<Vec<Line>, SocketError> {
        let mut lines = Vec::new();
        let mut size = 0;
        let mut code = 0;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = std::io::Read::take(&mut self.reader, (REPLY_MAX - size + 1) as u64)
                .read_until(b'\n', &mut buf)
                .map_err(|source| SocketError::Io { path: self.path.clone(), source })?;
            if n == 0 {
                return Err(SocketError::Protocol("the socket closed in a reply".into()));
            }
            size += n;
            if size > REPLY_MAX {
                return Err(SocketError::Protocol(format!("longer than {REPLY_MAX} bytes")));
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches(['\n', '\r']);
            let b = text.as_bytes();
            if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && matches!(b[4], b'-' | b' ')
            {
                code = text[..4].parse().unwrap_or(0);
                lines.push(Line { code, text: text[5..].to_owned() });
                if b[4] == b' ' {
                    return Ok(lines);
                }
            } else if let Some(rest) = text.strip_prefix(' ') {
                lines.push(Line { code, text: rest.to_owned() });
            } else if text.starts_with('+') {
                // A spontaneous message (`+` lines), not part of the reply.
            } else {
                return Err(SocketError::Protocol(format!("unexpected line {text:?}")));
            }
        }
    }
}

/// `"FILE"` for a command, refused when the path has a quote or is not UTF-8.
fn quoted(file: &Path) -> Result<String, SocketError> {
    match file.to_str() {
        Some(s) if !s.contains(['"', '\n']) => Ok(format!("\"{s}\"")),
        _ => Err(SocketError::Protocol(format!("{} cannot be named to BIRD", file.display()))),
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, os::unix::net::UnixListener};

    use super::*;

    /// A socket that answers each command with the next of `replies`.
    fn fake(replies: Vec<&'static str>) -> (std::path::PathBuf, std::thread::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!("sluice-birdsock-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{}.ctl", replies.len()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
            for r in replies {
                let mut byte = [0u8];
                while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {}
                s.write_all(r.as_bytes()).unwrap();
            }
        });
        (path, t)
    }

    #[test]
    fn replies_end_at_a_code_with_a_space_and_errors_carry_birds_message() {
        let (path, t) = fake(vec![
            "2002-Name Proto\n1002-a BGP --- up\n b BGP --- start\n+spontaneous\n0000 \n",
            "0002-Reading configuration from /x\n8002 /x:1:41 syntax error\n",
            "0002-Reading configuration from /y\n0020 Configuration OK\n",
        ]);
        let mut c = Client::connect(&path).unwrap();
        let lines = c.command("show protocols").unwrap();
        assert_eq!(lines.iter().map(|l| l.code).collect::<Vec<_>>(), [2002, 1002, 1002, 0]);
        assert_eq!(lines[2].text, "b BGP --- start");
        match c.check(Path::new("/x")) {
            Err(SocketError::Refused { code: 8002, message }) => {
                assert_eq!(message, "/x:1:41 syntax error");
            }
            other => panic!("{other:?}"),
        }
        c.check(Path::new("/y")).unwrap();
        t.join().unwrap();
        assert!(quoted(Path::new("/a\"b")).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
