//! Validation of transmission requests: from a parsed header (and, for
//! writes, the payload already read) to a `Command` the export can run, or
//! to the error the spec asks for.

use bytes::Bytes;

use crate::export::Errno;
use crate::proto::*;

/// What the session allows, as negotiated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub base_allocation: bool,
}

/// A validated request.
#[derive(Debug)]
pub(crate) enum Command {
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Cache {
        offset: u64,
        len: u32,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        may_trim: bool,
        fast_only: bool,
        fua: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

/// A request refused before reaching the export.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub errno: Errno,
    pub message: String,
}

fn reject(errno: Errno, message: impl Into<String>) -> Rejection {
    Rejection {
        errno,
        message: message.into(),
    }
}

pub(crate) fn command_name(command: u16) -> &'static str {
    match command {
        NBD_CMD_READ => "READ",
        NBD_CMD_WRITE => "WRITE",
        NBD_CMD_DISC => "DISC",
        NBD_CMD_FLUSH => "FLUSH",
        NBD_CMD_TRIM => "TRIM",
        NBD_CMD_CACHE => "CACHE",
        NBD_CMD_WRITE_ZEROES => "WRITE_ZEROES",
        NBD_CMD_BLOCK_STATUS => "BLOCK_STATUS",
        _ => "unknown",
    }
}

/// Checks a request against the spec and the session. `payload` is the
/// data of a WRITE (read off the wire whatever the verdict).
pub(crate) fn validate(
    h: &RequestHeader,
    payload: Option<Bytes>,
    lim: &Limits,
) -> Result<Command, Rejection> {
    let allowed = match h.command {
        NBD_CMD_READ if lim.structured => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
        NBD_CMD_WRITE_ZEROES => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
        NBD_CMD_BLOCK_STATUS => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
        NBD_CMD_READ | NBD_CMD_WRITE | NBD_CMD_FLUSH | NBD_CMD_TRIM | NBD_CMD_CACHE => {
            NBD_CMD_FLAG_FUA
        }
        other => return Err(reject(Errno::Inval, format!("unknown command {other}"))),
    };
    if h.flags & !allowed != 0 {
        return Err(reject(
            Errno::Inval,
            format!(
                "flags {:#x} not valid for {}",
                h.flags & !allowed,
                command_name(h.command)
            ),
        ));
    }
    let fua = h.flags & NBD_CMD_FLAG_FUA != 0;
    let (offset, len) = (h.offset, h.length);
    let in_range = offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= lim.size);
    let range_msg = || {
        format!(
            "range {offset}+{len} is beyond the end of the export ({} bytes)",
            lim.size
        )
    };
    let writes = matches!(
        h.command,
        NBD_CMD_WRITE | NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES
    );
    if writes && lim.read_only {
        return Err(reject(Errno::Perm, "the export is read-only"));
    }
    match h.command {
        NBD_CMD_READ => {
            if len > MAX_BLOCK_SIZE {
                return Err(reject(
                    Errno::Inval,
                    format!("read of {len} bytes exceeds the maximum block size {MAX_BLOCK_SIZE}"),
                ));
            }
            if !in_range {
                return Err(reject(Errno::Inval, range_msg()));
            }
            Ok(Command::Read {
                offset,
                len,
                df: h.flags & NBD_CMD_FLAG_DF != 0,
            })
        }
        NBD_CMD_WRITE => {
            if !in_range {
                return Err(reject(Errno::NoSpc, range_msg()));
            }
            let data = payload.expect("the reader reads every write payload");
            Ok(Command::Write { offset, data, fua })
        }
        NBD_CMD_FLUSH => Ok(Command::Flush),
        NBD_CMD_TRIM => {
            if !in_range {
                return Err(reject(Errno::Inval, range_msg()));
            }
            Ok(Command::Trim { offset, len, fua })
        }
        NBD_CMD_CACHE => {
            if len > MAX_BLOCK_SIZE {
                return Err(reject(
                    Errno::Inval,
                    format!("cache of {len} bytes exceeds the maximum block size {MAX_BLOCK_SIZE}"),
                ));
            }
            if !in_range {
                return Err(reject(Errno::Inval, range_msg()));
            }
            Ok(Command::Cache { offset, len })
        }
        NBD_CMD_WRITE_ZEROES => {
            let fast_only = h.flags & NBD_CMD_FLAG_FAST_ZERO != 0;
            if !in_range {
                return Err(reject(Errno::NoSpc, range_msg()));
            }
            Ok(Command::WriteZeroes {
                offset,
                len,
                may_trim: h.flags & NBD_CMD_FLAG_NO_HOLE == 0,
                fast_only,
                fua,
            })
        }
        NBD_CMD_BLOCK_STATUS => {
            if !lim.base_allocation {
                return Err(reject(
                    Errno::Inval,
                    "BLOCK_STATUS without a metadata context selected for this export",
                ));
            }
            if len == 0 {
                return Err(reject(Errno::Inval, "BLOCK_STATUS of length 0"));
            }
            if !in_range {
                return Err(reject(Errno::Inval, range_msg()));
            }
            Ok(Command::BlockStatus {
                offset,
                len,
                req_one: h.flags & NBD_CMD_FLAG_REQ_ONE != 0,
            })
        }
        _ => unreachable!("unknown commands were refused above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        size: 1 << 20,
        read_only: false,
        structured: true,
        base_allocation: true,
    };

    fn h(command: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            magic: NBD_REQUEST_MAGIC,
            flags,
            command,
            handle: 1,
            offset,
            length,
        }
    }

    fn errno(r: Result<Command, Rejection>) -> Errno {
        r.expect_err("should be refused").errno
    }

    #[test]
    fn range_errors_per_command() {
        assert_eq!(
            errno(validate(&h(NBD_CMD_READ, 0, 1 << 20, 1), None, &LIM)),
            Errno::Inval
        );
        assert_eq!(
            errno(validate(
                &h(NBD_CMD_WRITE, 0, 1 << 20, 1),
                Some(Bytes::from_static(b"x")),
                &LIM
            )),
            Errno::NoSpc
        );
        assert_eq!(
            errno(validate(
                &h(NBD_CMD_WRITE_ZEROES, 0, u64::MAX, 2),
                None,
                &LIM
            )),
            Errno::NoSpc
        );
        assert_eq!(
            errno(validate(&h(NBD_CMD_TRIM, 0, 1 << 20, 1), None, &LIM)),
            Errno::Inval
        );
        assert_eq!(
            errno(validate(
                &h(NBD_CMD_BLOCK_STATUS, 0, 0, (1 << 20) + 1),
                None,
                &LIM
            )),
            Errno::Inval
        );
        assert!(validate(&h(NBD_CMD_READ, 0, (1 << 20) - 1, 1), None, &LIM).is_ok());
    }

    #[test]
    fn flags_per_command() {
        assert_eq!(
            errno(validate(
                &h(NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 1),
                None,
                &LIM
            )),
            Errno::Inval
        );
        assert_eq!(
            errno(validate(&h(NBD_CMD_READ, 1 << 9, 0, 1), None, &LIM)),
            Errno::Inval
        );
        let simple = Limits {
            structured: false,
            ..LIM
        };
        assert_eq!(
            errno(validate(
                &h(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1),
                None,
                &simple
            )),
            Errno::Inval
        );
        assert!(validate(
            &h(NBD_CMD_READ, NBD_CMD_FLAG_DF | NBD_CMD_FLAG_FUA, 0, 1),
            None,
            &LIM
        )
        .is_ok());
        assert!(validate(
            &h(
                NBD_CMD_WRITE_ZEROES,
                NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
                0,
                1
            ),
            None,
            &LIM
        )
        .is_ok());
        assert_eq!(errno(validate(&h(9, 0, 0, 0), None, &LIM)), Errno::Inval);
    }

    #[test]
    fn read_only_and_block_status_rules() {
        let ro = Limits {
            read_only: true,
            ..LIM
        };
        assert_eq!(
            errno(validate(&h(NBD_CMD_TRIM, 0, 0, 1), None, &ro)),
            Errno::Perm
        );
        assert_eq!(
            errno(validate(&h(NBD_CMD_WRITE_ZEROES, 0, 1 << 30, 1), None, &ro)),
            Errno::Perm
        );
        assert!(validate(&h(NBD_CMD_FLUSH, 0, 0, 0), None, &ro).is_ok());
        let no_meta = Limits {
            base_allocation: false,
            ..LIM
        };
        assert_eq!(
            errno(validate(&h(NBD_CMD_BLOCK_STATUS, 0, 0, 1), None, &no_meta)),
            Errno::Inval
        );
        assert_eq!(
            errno(validate(
                &h(NBD_CMD_READ, 0, 0, MAX_BLOCK_SIZE + 1),
                None,
                &LIM
            )),
            Errno::Inval
        );
    }
}
