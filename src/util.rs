//! Small helpers shared by the commands: exit codes, progress bars, dates.

use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::sync::Mutex;

/// Exit code 1 for invalid input, 2 for usage and environment errors.
pub fn exit_code_for(e: &anyhow::Error) -> ExitCode {
    for cause in e.chain() {
        if let Some(fe) = cause.downcast_ref::<fragments::Error>() {
            return ExitCode::from(if fe.is_invalid_input() { 1 } else { 2 });
        }
        if let Some(le) = cause.downcast_ref::<layout::Error>() {
            return ExitCode::from(if le.is_invalid_input() { 1 } else { 2 });
        }
        if let Some(ve) = cause.downcast_ref::<volume::Error>() {
            return ExitCode::from(if ve.is_invalid_input() { 1 } else { 2 });
        }
        if cause.downcast_ref::<InvalidInput>().is_some() {
            return ExitCode::from(1);
        }
    }
    ExitCode::from(2)
}

/// Marks an error as "the input is invalid" (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    pub fn new() -> Bar {
        Bar {
            bar: Mutex::new(None),
        }
    }
    pub fn finish(&self) {
        if let Some(b) = self.bar.lock().expect("bar lock").take() {
            b.finish_and_clear();
        }
    }
}

impl fragments::Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        let mut g = self.bar.lock().expect("bar lock");
        if let Some(b) = g.take() {
            b.finish_and_clear();
        }
        let b = if total > 0 {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:18} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        } else {
            let b = ProgressBar::new_spinner();
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        };
        b.set_message(name.to_owned());
        *g = Some(b);
    }
    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().expect("bar lock").as_ref() {
            b.inc(n);
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time.
pub fn format_time(sec: i64) -> String {
    let days = sec.div_euclid(86400);
    let rem = sec.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `ls -l` style permission string.
pub fn mode_string(kind: fragments::Kind, perm: u16) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind.letter());
    let p = perm as u32;
    for (i, who) in [(6, 0o4000), (3, 0o2000), (0, 0o1000)] {
        let bits = (p >> i) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        let special = p & who != 0;
        s.push(match (i, special, x) {
            (0, true, true) => 't',
            (0, true, false) => 'T',
            (_, true, true) => 's',
            (_, true, false) => 'S',
            (_, false, true) => 'x',
            (_, false, false) => '-',
        });
    }
    s
}

/// Bytes as a shell-safe display string (non-UTF-8 escaped).
pub fn show(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap_or_else(|_| b.escape_ascii().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_modes() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_time(-1), "1969-12-31 23:59:59");
        assert_eq!(
            mode_string(fragments::Kind::Directory, 0o1777),
            "drwxrwxrwt"
        );
        assert_eq!(mode_string(fragments::Kind::Regular, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(fragments::Kind::Regular, 0o2644), "-rw-r-Sr--");
    }
}
