//! The terminal of interactive `linkcast top`: keys read one at a time without echo, the view
//! drawn in place on the alternate screen, and everything restored however top ends.
//!
//! [`Screen::enter`] turns off canonical mode, echo and signal keys on stdin (termios via libc:
//! Ctrl-C then arrives as byte 3 and is handled like `q`, so the terminal is restored before
//! exit), switches to the alternate screen and hides the cursor; dropping the [`Screen`] (normal
//! exit, error or panic unwinding) puts back the saved termios, the cursor and the main screen.
//! Keys come from a thread blocked on stdin through a small bounded channel.

use std::io::{Read, Write};

use tokio::sync::mpsc;

/// The terminal while top runs interactively.
pub(crate) struct Screen {
    saved: libc::termios,
}

impl Screen {
    /// True when both stdin and stdout are terminals.
    pub(crate) fn available() -> bool {
        // SAFETY: isatty only inspects the descriptors.
        unsafe { libc::isatty(libc::STDIN_FILENO) == 1 && libc::isatty(libc::STDOUT_FILENO) == 1 }
    }

    /// Saves the terminal's settings, then switches to key-at-a-time input and the alternate
    /// screen.
    pub(crate) fn enter() -> std::io::Result<Screen> {
        // SAFETY: a zeroed termios is a valid value for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid pointer to a termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; `raw` is a copy of the terminal's own settings.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let screen = Screen { saved };
        let mut out = std::io::stdout();
        out.write_all(b"\x1b[?1049h\x1b[?25l")?;
        out.flush()?;
        Ok(screen)
    }

    /// Draws `text` from the top left, clearing what was there.
    pub(crate) fn draw(&self, text: &str) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(b"\x1b[H\x1b[2J")?;
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// Columns of the terminal (80 if unknown).
    pub(crate) fn width() -> usize {
        // SAFETY: a zeroed winsize is valid; TIOCGWINSZ fills it.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: fd 1 and a valid pointer to a winsize.
        let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
        if rc == 0 && size.ws_col > 0 {
            usize::from(size.ws_col)
        } else {
            80
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        // SAFETY: restores the settings read in `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Bytes typed on stdin, from a thread of their own (it ends with the process).
pub(crate) fn keys() -> mpsc::Receiver<u8> {
    let (send, receive) = mpsc::channel(16);
    let spawned = std::thread::Builder::new().name("linkcast-top-keys".into()).spawn(move || {
        let mut stdin = std::io::stdin();
        let mut byte = [0u8; 1];
        while let Ok(1) = stdin.read(&mut byte) {
            if send.blocking_send(byte[0]).is_err() {
                break;
            }
        }
    });
    if spawned.is_err() {
        tracing::warn!("cannot read keys: quit with SIGTERM");
    }
    receive
}

/// `q`, `Q`, Ctrl-C (3) or Ctrl-D (4): quit.
pub(crate) fn is_quit(key: u8) -> bool {
    matches!(key, b'q' | b'Q' | 3 | 4)
}
