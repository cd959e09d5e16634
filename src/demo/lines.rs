//! A replica's output, passed on line by line under its name, so several replicas' logs
//! can share one terminal and still be told apart.

use std::io::Write;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

/// The most of one line kept: a child that writes a huge line must not grow the demo's
/// memory with it. Log lines are a few hundred bytes.
pub const MAX_LINE: usize = 16 * 1024;

/// One line as read: at most [`MAX_LINE`] bytes of it, and how many were cut.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub bytes: Vec<u8>,
    pub cut: usize,
}

/// The next line of `reader` without its line ending, keeping at most `max` bytes; the
/// rest of a longer line is read and dropped. `None` at the end of the stream.
pub async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Line {
        bytes: Vec::new(),
        cut: 0,
    };
    let mut read_any = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(line));
        }
        read_any = true;
        let (part, used, ended) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let keep = part.len().min(max.saturating_sub(line.bytes.len()));
        line.bytes.extend_from_slice(&part[..keep]);
        line.cut += part.len() - keep;
        reader.consume(used);
        if ended {
            if line.bytes.last() == Some(&b'\r') {
                line.bytes.pop();
            }
            return Ok(Some(line));
        }
    }
}

/// Copies `source` line by line, each under `tag`, to `sink` (a [`printer`]) until
/// `source` ends; returns the last line, which says why a replica that stops at once did
/// so. The child must never block on a full pipe: while the printer cannot keep up (a
/// paused terminal) lines are dropped and counted, and the count is printed once it can.
pub async fn pass_on(
    source: impl AsyncRead + Unpin,
    tag: String,
    sink: mpsc::Sender<Vec<u8>>,
) -> Option<String> {
    let mut reader = BufReader::new(source);
    let mut last = None;
    let mut dropped = 0usize;
    while let Ok(Some(line)) = next_line(&mut reader, MAX_LINE).await {
        let text = String::from_utf8_lossy(&line.bytes).into_owned();
        let mut out = format!("{tag} │ {text}");
        if line.cut > 0 {
            out.push_str(&format!(" … ({} more bytes not shown)", line.cut));
        }
        out.push('\n');
        let sent = if dropped == 0 {
            // A burst may outrun the printer for a moment: wait for it a little.
            tokio::time::timeout(BURST_WAIT, sink.send(out.into_bytes()))
                .await
                .is_ok_and(|sent| sent.is_ok())
        } else {
            let note = format!("{tag} │ … {dropped} lines not shown: the output was not read\n");
            sink.try_send(note.into_bytes()).is_ok() && {
                dropped = 0;
                sink.try_send(out.into_bytes()).is_ok()
            }
        };
        if !sent {
            dropped += 1;
        }
        last = Some(text);
    }
    last
}

/// How long a line waits for a printer that is behind before it is dropped.
const BURST_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Where a [`printer`] writes.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Lines queued before the children's copies wait (and so the children, on their pipes).
const PRINT_QUEUE: usize = 256;

/// A thread that writes whole lines to the demo's `stream`: a slow terminal or a full pipe
/// blocks it, never the runtime, and lines from several replicas never interleave. It ends
/// once every sender is dropped and the lines queued are written.
pub fn printer(
    stream: Stream,
) -> std::io::Result<(mpsc::Sender<Vec<u8>>, std::thread::JoinHandle<()>)> {
    let (sink, mut lines) = mpsc::channel::<Vec<u8>>(PRINT_QUEUE);
    let thread = std::thread::Builder::new()
        .name(format!("demo-{stream:?}").to_lowercase())
        .spawn(move || {
            while let Some(line) = lines.blocking_recv() {
                let _ = match stream {
                    Stream::Stdout => write_line(&mut std::io::stdout().lock(), &line),
                    Stream::Stderr => write_line(&mut std::io::stderr().lock(), &line),
                };
            }
        })?;
    Ok((sink, thread))
}

/// Prints the demo's own `text` (and a newline) on stdout. A closed stdout (`rollcall demo
/// | head`) must not end the demo: `println!` would panic there.
pub fn tell(text: &str) {
    let _ = write_line(
        &mut std::io::stdout().lock(),
        format!("{text}\n").as_bytes(),
    );
}

fn write_line(out: &mut impl Write, line: &[u8]) -> std::io::Result<()> {
    out.write_all(line)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = input;
        let mut out = Vec::new();
        while let Some(line) = next_line(&mut reader, max).await.unwrap() {
            out.push(line);
        }
        out
    }

    fn line(text: &str, cut: usize) -> Line {
        Line {
            bytes: text.as_bytes().to_vec(),
            cut,
        }
    }

    #[tokio::test]
    async fn lines_are_split_and_capped() {
        assert_eq!(
            lines(b"one\r\ntwo\n\nlast without newline", 100).await,
            [
                line("one", 0),
                line("two", 0),
                line("", 0),
                line("last without newline", 0)
            ]
        );
        assert_eq!(
            lines(b"abcdefgh\nij\n", 3).await,
            [line("abc", 5), line("ij", 0)]
        );
        assert!(lines(b"", 3).await.is_empty());
    }

    #[tokio::test]
    async fn a_ten_megabyte_line_keeps_only_its_start() {
        let mut input = vec![b'x'; 10 * 1024 * 1024];
        input.extend_from_slice(b"\nnext\n");
        // A small buffer, as from a pipe: the line arrives in many pieces.
        let mut reader = BufReader::with_capacity(4096, input.as_slice());
        let first = next_line(&mut reader, MAX_LINE).await.unwrap().unwrap();
        assert_eq!(first.bytes.len(), MAX_LINE);
        assert_eq!(first.cut, 10 * 1024 * 1024 - MAX_LINE);
        assert!(first.bytes.capacity() < 2 * MAX_LINE + 4096);
        let next = next_line(&mut reader, MAX_LINE).await.unwrap().unwrap();
        assert_eq!(next, line("next", 0));
    }

    #[tokio::test]
    async fn passed_on_lines_carry_the_tag() {
        let (sink, mut printed) = mpsc::channel(8);
        let last = pass_on(&b"hello\nworld\n"[..], "replica-2".into(), sink).await;
        let mut out = Vec::new();
        while let Some(line) = printed.recv().await {
            out.extend(line);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "replica-2 │ hello\nreplica-2 │ world\n"
        );
        assert_eq!(last.as_deref(), Some("world"));
    }
}
