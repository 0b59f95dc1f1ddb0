//! Binding: the values a request sends for a statement's markers (by
//! position or by name), and the helpers that evaluate a term of the
//! syntax tree against them into a serialized value of a given type.

use bytes::Bytes;

use crate::cql::Parsed;
use crate::cql::ast::Term;
use crate::error::ServerError;
use crate::frame::Value;
use crate::types::{self, Binder, BoundValue, CqlType, Evaluated, evaluate};

/// The values bound to a statement's markers.
#[derive(Debug)]
pub(crate) struct Values<'a> {
    pub(super) values: &'a [Value<'a>],
    order: Option<Vec<usize>>,
}

impl<'a> Values<'a> {
    pub(crate) fn new(
        parsed: &Parsed,
        values: &'a [Value<'a>],
        names: Option<&[&str]>,
    ) -> Result<Values<'a>, ServerError> {
        if values.len() != parsed.bind_count {
            return Err(ServerError::invalid(format!(
                "There were {} markers(?) in CQL but {} bound variables",
                parsed.bind_count,
                values.len()
            )));
        }
        let order = match names {
            None => None,
            Some(names) => Some(
                parsed
                    .bind_names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let n = n.as_deref().ok_or_else(|| {
                            ServerError::invalid(format!(
                                "Bind marker {i} has no name but values were sent by name"
                            ))
                        })?;
                        names
                            .iter()
                            .position(|x| x.eq_ignore_ascii_case(n))
                            .ok_or_else(|| {
                                ServerError::invalid(format!(
                                    "No value was bound for the named marker :{n}"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Values { values, order })
    }
}

impl Binder for Values<'_> {
    fn bound(&self, index: usize) -> Result<BoundValue<'_>, String> {
        let i = match &self.order {
            Some(o) => *o.get(index).ok_or("bind marker out of range")?,
            None => index,
        };
        Ok(
            match self.values.get(i).ok_or("bind marker out of range")? {
                Value::Bytes(b) => BoundValue::Value(b),
                Value::Null => BoundValue::Null,
                Value::Unset => BoundValue::Unset,
            },
        )
    }
}

/// Evaluates `term` as a value of `ty` for the column (or marker) named
/// `what`, which Cassandra's messages name.
pub(super) fn eval(
    ty: &CqlType,
    term: &Term,
    b: &dyn Binder,
    what: &str,
) -> Result<Evaluated, ServerError> {
    evaluate(ty, term, b).map_err(|e| ServerError::invalid(types::name_receiver(&e, what)))
}

pub(super) fn eval_value(
    ty: &CqlType,
    term: &Term,
    b: &dyn Binder,
    what: &str,
) -> Result<Bytes, ServerError> {
    match eval(ty, term, b, what)? {
        Evaluated::Value(v) => Ok(v),
        Evaluated::Null => Err(ServerError::invalid(format!(
            "Invalid null value for {what}"
        ))),
        Evaluated::Unset => Err(ServerError::invalid(format!(
            "Invalid unset value for {what}"
        ))),
    }
}

pub(super) fn eval_int(term: &Term, b: &dyn Binder, what: &str) -> Result<i32, ServerError> {
    let v = eval_value(&CqlType::Int, term, b, what)?;
    Ok(i32::from_be_bytes(v[..4].try_into().map_err(|_| {
        ServerError::invalid(format!("Invalid {what}"))
    })?))
}

pub(super) fn eval_list(
    ty: &CqlType,
    term: &Term,
    b: &dyn Binder,
    what: &str,
) -> Result<Vec<Bytes>, ServerError> {
    let list_ty = CqlType::List(Box::new(ty.clone()));
    let v = eval_value(&list_ty, term, b, what)?;
    types::collection_elements(&v)
        .map_err(ServerError::invalid)?
        .into_iter()
        .map(|e| {
            e.map(Bytes::copy_from_slice)
                .ok_or_else(|| ServerError::invalid("null inside IN list"))
        })
        .collect()
}
