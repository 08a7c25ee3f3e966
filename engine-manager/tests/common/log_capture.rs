//! Every log line of the managers running in this test process, captured to be
//! counted and searched (`TEST_LOG` set: also printed to stderr).

use std::sync::{Arc, Mutex, OnceLock};

/// Every log line of this test process's managers (in-process ones log through the
/// global subscriber that [`LogCapture::install`] sets up once per test binary).
#[derive(Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<String>>>,
}

pub struct CaptureWriter {
    capture: LogCapture,
    buf: Vec<u8>,
}

impl std::io::Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for CaptureWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        if std::env::var_os("TEST_LOG").is_some() {
            eprint!("{text}");
        }
        let mut lines = self.capture.lines.lock().expect("log lock");
        lines.extend(text.lines().map(str::to_string));
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter {
            capture: self.clone(),
            buf: Vec::new(),
        }
    }
}

impl LogCapture {
    /// The process-wide capture (installed as the global subscriber on first use, at
    /// `info`, like the binary's default).
    pub fn install() -> LogCapture {
        static CAPTURE: OnceLock<LogCapture> = OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let capture = LogCapture::default();
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                    .with_ansi(false)
                    .with_writer(capture.clone())
                    .try_init();
                capture
            })
            .clone()
    }

    /// How many lines were captured so far (a mark for [`Self::lines_since`]).
    pub fn mark(&self) -> usize {
        self.lines.lock().expect("log lock").len()
    }

    pub fn lines_since(&self, mark: usize) -> Vec<String> {
        self.lines.lock().expect("log lock")[mark..].to_vec()
    }
}
