//! The CQL subset testkit understands: a syntax tree and its parser.
//!
//! ```
//! use tower_cql_testkit::cql::{self, ast::Statement};
//!
//! let parsed = cql::parse("SELECT v FROM ks.t WHERE k = ?").unwrap();
//! assert!(matches!(parsed.statement, Statement::Select(_)));
//! assert_eq!(parsed.bind_count, 1);
//! let err = cql::parse("SELECT * FORM t").unwrap_err();
//! assert!(err.to_string().contains("FORM"));
//! ```

//! Written by hand: no CQL parser crate covers the statements testkit runs
//! and answers with Cassandra's error positions and messages (`line 1:9
//! mismatched input 'FORM' expecting FROM`), which tests of client code
//! compare against.

pub mod ast;
mod lexer;
mod parser;

pub use parser::{ParseError, Parsed, parse};
