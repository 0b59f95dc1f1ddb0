//! The errors the server answers with, as the protocol encodes them.

use bytes::{BufMut, BytesMut};

use crate::frame::WriteExt;

/// A consistency level, as the protocol numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// ANY
    Any,
    /// ONE
    One,
    /// TWO
    Two,
    /// THREE
    Three,
    /// QUORUM
    Quorum,
    /// ALL
    All,
    /// LOCAL_QUORUM
    LocalQuorum,
    /// EACH_QUORUM
    EachQuorum,
    /// SERIAL
    Serial,
    /// LOCAL_SERIAL
    LocalSerial,
    /// LOCAL_ONE
    LocalOne,
}

impl Consistency {
    /// The protocol's code.
    pub fn code(self) -> u16 {
        match self {
            Consistency::Any => 0,
            Consistency::One => 1,
            Consistency::Two => 2,
            Consistency::Three => 3,
            Consistency::Quorum => 4,
            Consistency::All => 5,
            Consistency::LocalQuorum => 6,
            Consistency::EachQuorum => 7,
            Consistency::Serial => 8,
            Consistency::LocalSerial => 9,
            Consistency::LocalOne => 10,
        }
    }

    /// Decodes a protocol code.
    pub fn from_code(code: u16) -> Option<Consistency> {
        Some(match code {
            0 => Consistency::Any,
            1 => Consistency::One,
            2 => Consistency::Two,
            3 => Consistency::Three,
            4 => Consistency::Quorum,
            5 => Consistency::All,
            6 => Consistency::LocalQuorum,
            7 => Consistency::EachQuorum,
            8 => Consistency::Serial,
            9 => Consistency::LocalSerial,
            10 => Consistency::LocalOne,
            _ => return None,
        })
    }

    /// How many replicas out of `rf` must answer.
    pub fn required(self, rf: usize) -> usize {
        match self {
            Consistency::Any => 1,
            Consistency::One | Consistency::LocalOne => 1,
            Consistency::Two => 2,
            Consistency::Three => 3,
            Consistency::Quorum
            | Consistency::LocalQuorum
            | Consistency::EachQuorum
            | Consistency::Serial
            | Consistency::LocalSerial => rf / 2 + 1,
            Consistency::All => rf,
        }
    }
}

/// The kind of write a WRITE_TIMEOUT or WRITE_FAILURE reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteType {
    /// A single-partition write.
    Simple,
    /// A logged batch.
    Batch,
    /// An unlogged batch.
    UnloggedBatch,
    /// A counter write.
    Counter,
    /// The batch log write of a logged batch.
    BatchLog,
    /// The Paxos phase of an LWT.
    Cas,
    /// A materialized view write.
    View,
    /// CDC.
    Cdc,
}

impl WriteType {
    /// The protocol's name.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteType::Simple => "SIMPLE",
            WriteType::Batch => "BATCH",
            WriteType::UnloggedBatch => "UNLOGGED_BATCH",
            WriteType::Counter => "COUNTER",
            WriteType::BatchLog => "BATCH_LOG",
            WriteType::Cas => "CAS",
            WriteType::View => "VIEW",
            WriteType::Cdc => "CDC",
        }
    }
}

/// The error-specific fields some error codes carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorExtra {
    None,
    Unavailable {
        consistency: u16,
        required: i32,
        alive: i32,
    },
    WriteTimeout {
        consistency: u16,
        received: i32,
        block_for: i32,
        write_type: WriteType,
    },
    ReadTimeout {
        consistency: u16,
        received: i32,
        block_for: i32,
        data_present: bool,
    },
    ReadFailure {
        consistency: u16,
        received: i32,
        block_for: i32,
        failures: i32,
        data_present: bool,
    },
    WriteFailure {
        consistency: u16,
        received: i32,
        block_for: i32,
        failures: i32,
        write_type: WriteType,
    },
    AlreadyExists {
        keyspace: String,
        table: String,
    },
    Unprepared {
        id: Vec<u8>,
    },
}

/// An error response: code, message, extra fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerError {
    pub(crate) code: i32,
    pub(crate) message: String,
    pub(crate) extra: ErrorExtra,
}

pub(crate) const SERVER_ERROR: i32 = 0x0000;
pub(crate) const PROTOCOL_ERROR: i32 = 0x000A;
pub(crate) const UNAVAILABLE: i32 = 0x1000;
pub(crate) const OVERLOADED: i32 = 0x1001;
pub(crate) const IS_BOOTSTRAPPING: i32 = 0x1002;
pub(crate) const TRUNCATE_ERROR: i32 = 0x1003;
pub(crate) const WRITE_TIMEOUT: i32 = 0x1100;
pub(crate) const READ_TIMEOUT: i32 = 0x1200;
pub(crate) const READ_FAILURE: i32 = 0x1300;
pub(crate) const WRITE_FAILURE: i32 = 0x1500;
pub(crate) const SYNTAX_ERROR: i32 = 0x2000;
pub(crate) const UNAUTHORIZED: i32 = 0x2100;
pub(crate) const INVALID: i32 = 0x2200;
pub(crate) const CONFIG_ERROR: i32 = 0x2300;
pub(crate) const ALREADY_EXISTS: i32 = 0x2400;
pub(crate) const UNPREPARED: i32 = 0x2500;

impl ServerError {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> ServerError {
        ServerError {
            code,
            message: message.into(),
            extra: ErrorExtra::None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> ServerError {
        ServerError::new(INVALID, message)
    }

    pub(crate) fn syntax(message: impl Into<String>) -> ServerError {
        ServerError::new(SYNTAX_ERROR, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> ServerError {
        ServerError::new(CONFIG_ERROR, message)
    }

    pub(crate) fn protocol(message: impl Into<String>) -> ServerError {
        ServerError::new(PROTOCOL_ERROR, message)
    }

    pub(crate) fn already_exists(keyspace: &str, table: &str) -> ServerError {
        let message = if table.is_empty() {
            format!("Cannot add existing keyspace \"{keyspace}\"")
        } else {
            format!("Cannot add already existing table \"{table}\" to keyspace \"{keyspace}\"")
        };
        ServerError {
            code: ALREADY_EXISTS,
            message,
            extra: ErrorExtra::AlreadyExists {
                keyspace: keyspace.into(),
                table: table.into(),
            },
        }
    }

    pub(crate) fn unprepared(id: &[u8]) -> ServerError {
        ServerError {
            code: UNPREPARED,
            message: format!(
                "Prepared query with ID {} not found (either the query was not prepared on this host (maybe the host has been restarted?) or you have prepared too many queries and it has been evicted from the internal cache)",
                id.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
            extra: ErrorExtra::Unprepared { id: id.to_vec() },
        }
    }

    pub(crate) fn unavailable(consistency: u16, required: usize, alive: usize) -> ServerError {
        ServerError {
            code: UNAVAILABLE,
            message: format!(
                "Cannot achieve consistency level {}: {required} replicas required, {alive} alive",
                consistency_name(consistency)
            ),
            extra: ErrorExtra::Unavailable {
                consistency,
                required: required as i32,
                alive: alive as i32,
            },
        }
    }

    /// Writes the ERROR body.
    pub(crate) fn write_body(&self, out: &mut BytesMut) {
        out.put_i32(self.code);
        out.put_string(&self.message);
        match &self.extra {
            ErrorExtra::None => {}
            ErrorExtra::Unavailable {
                consistency,
                required,
                alive,
            } => {
                out.put_u16(*consistency);
                out.put_i32(*required);
                out.put_i32(*alive);
            }
            ErrorExtra::WriteTimeout {
                consistency,
                received,
                block_for,
                write_type,
            } => {
                out.put_u16(*consistency);
                out.put_i32(*received);
                out.put_i32(*block_for);
                out.put_string(write_type.as_str());
            }
            ErrorExtra::ReadTimeout {
                consistency,
                received,
                block_for,
                data_present,
            } => {
                out.put_u16(*consistency);
                out.put_i32(*received);
                out.put_i32(*block_for);
                out.put_u8(u8::from(*data_present));
            }
            ErrorExtra::ReadFailure {
                consistency,
                received,
                block_for,
                failures,
                data_present,
            } => {
                out.put_u16(*consistency);
                out.put_i32(*received);
                out.put_i32(*block_for);
                out.put_i32(*failures);
                out.put_u8(u8::from(*data_present));
            }
            ErrorExtra::WriteFailure {
                consistency,
                received,
                block_for,
                failures,
                write_type,
            } => {
                out.put_u16(*consistency);
                out.put_i32(*received);
                out.put_i32(*block_for);
                out.put_i32(*failures);
                out.put_string(write_type.as_str());
            }
            ErrorExtra::AlreadyExists { keyspace, table } => {
                out.put_string(keyspace);
                out.put_string(table);
            }
            ErrorExtra::Unprepared { id } => out.put_short_bytes(id),
        }
    }
}

/// The name of a consistency code, for messages.
pub(crate) fn consistency_name(code: u16) -> &'static str {
    match Consistency::from_code(code) {
        Some(Consistency::Any) => "ANY",
        Some(Consistency::One) => "ONE",
        Some(Consistency::Two) => "TWO",
        Some(Consistency::Three) => "THREE",
        Some(Consistency::Quorum) => "QUORUM",
        Some(Consistency::All) => "ALL",
        Some(Consistency::LocalQuorum) => "LOCAL_QUORUM",
        Some(Consistency::EachQuorum) => "EACH_QUORUM",
        Some(Consistency::Serial) => "SERIAL",
        Some(Consistency::LocalSerial) => "LOCAL_SERIAL",
        Some(Consistency::LocalOne) => "LOCAL_ONE",
        None => "UNKNOWN",
    }
}
