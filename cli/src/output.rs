//! Tables for people, JSON for scripts; both to stdout. Progress goes to stderr.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Left-aligned columns separated by two spaces; an empty cell shows as `-`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell(c).chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(&c);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row.iter().map(|c| cell(c)).collect(), &mut out);
    }
    out
}

pub fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("serializes") + "\n"
}

/// A line on stderr that turns while something slow runs (only on a terminal), then says how
/// it ended.
pub struct Spinner {
    task: Option<tokio::task::JoinHandle<()>>,
    what: String,
    started: Instant,
}

impl Spinner {
    pub fn start(what: impl Into<String>) -> Spinner {
        let what = what.into();
        let task = if std::io::stderr().is_terminal() {
            let w = what.clone();
            Some(tokio::spawn(async move {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let started = Instant::now();
                for i in 0.. {
                    eprint!(
                        "\r{} {w} {}s ",
                        frames[i % frames.len()],
                        started.elapsed().as_secs()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }))
        } else {
            eprintln!("{what}…");
            None
        };
        Spinner {
            task,
            what,
            started: Instant::now(),
        }
    }

    pub fn done(mut self, result: &str) {
        self.finish(result);
    }

    fn finish(&mut self, result: &str) {
        if let Some(t) = self.task.take() {
            t.abort();
            eprint!("\r\x1b[2K");
        }
        eprintln!(
            "{} {} ({:.1} s)",
            self.what,
            result,
            self.started.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_empty_cells_show_a_dash() {
        let t = table(
            &["NAME", "SUBNET"],
            &[
                vec!["alpha".into(), "10.210.1.0/24".into()],
                vec!["b".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME   SUBNET\nalpha  10.210.1.0/24\nb      -\n");
    }
}
