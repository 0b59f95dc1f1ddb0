//! Whether a type a prepared statement binds is the type the schema
//! metadata gives its column now (see `DriverInner::outdated`).

use scylla::cluster::metadata::ColumnType;

/// Whether `bound`, a type a prepared statement binds, is `now`, the
/// type the schema metadata gives the column, whether frozen or not: the
/// metadata says which collections and user types are frozen, a prepared
/// statement never does (the server does not send it), so `frozen` is
/// not compared, at any depth.
pub(super) fn same_type(bound: &ColumnType<'_>, now: &ColumnType<'_>) -> bool {
    use scylla::cluster::metadata::CollectionType as C;
    match (bound, now) {
        (ColumnType::Native(a), ColumnType::Native(b)) => a == b,
        (ColumnType::Collection { typ: a, .. }, ColumnType::Collection { typ: b, .. }) => {
            match (a, b) {
                (C::List(a), C::List(b)) | (C::Set(a), C::Set(b)) => same_type(a, b),
                (C::Map(ak, av), C::Map(bk, bv)) => same_type(ak, bk) && same_type(av, bv),
                _ => false,
            }
        }
        (
            ColumnType::Vector {
                typ: a,
                dimensions: da,
            },
            ColumnType::Vector {
                typ: b,
                dimensions: db,
            },
        ) => da == db && same_type(a, b),
        (ColumnType::Tuple(a), ColumnType::Tuple(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_type(a, b))
        }
        (
            ColumnType::UserDefinedType { definition: a, .. },
            ColumnType::UserDefinedType { definition: b, .. },
        ) => {
            a.keyspace == b.keyspace
                && a.name == b.name
                && a.field_types.len() == b.field_types.len()
                && a.field_types
                    .iter()
                    .zip(&b.field_types)
                    .all(|((an, at), (bn, bt))| an == bn && same_type(at, bt))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use scylla::cluster::metadata::{CollectionType, ColumnType, NativeType, UserDefinedType};

    use super::same_type;

    fn list(frozen: bool, of: ColumnType<'static>) -> ColumnType<'static> {
        ColumnType::Collection {
            frozen,
            typ: CollectionType::List(Box::new(of)),
        }
    }

    fn udt(frozen: bool, field: ColumnType<'static>) -> ColumnType<'static> {
        ColumnType::UserDefinedType {
            frozen,
            definition: Arc::new(UserDefinedType {
                name: "pt".into(),
                keyspace: "ks".into(),
                field_types: vec![("x".into(), field)],
            }),
        }
    }

    const INT: ColumnType<'static> = ColumnType::Native(NativeType::Int);
    const TEXT: ColumnType<'static> = ColumnType::Native(NativeType::Text);

    #[test]
    fn frozen_is_not_compared_at_any_depth() {
        // what a prepared statement says (never frozen) against the metadata
        assert!(same_type(&list(false, INT), &list(true, INT)));
        assert!(same_type(
            &list(false, udt(false, INT)),
            &list(true, udt(true, INT))
        ));
        assert!(same_type(
            &udt(false, list(false, INT)),
            &udt(true, list(true, INT))
        ));
    }

    #[test]
    fn a_type_changed_inside_is_another() {
        assert!(!same_type(&list(false, INT), &list(false, TEXT)));
        assert!(!same_type(&udt(false, INT), &udt(true, TEXT)));
        let map = |v| ColumnType::Collection {
            frozen: false,
            typ: CollectionType::Map(Box::new(TEXT), Box::new(v)),
        };
        assert!(!same_type(&map(INT), &map(TEXT)));
        assert!(!same_type(
            &ColumnType::Tuple(vec![INT, INT]),
            &ColumnType::Tuple(vec![INT, TEXT])
        ));
        let set = ColumnType::Collection {
            frozen: false,
            typ: CollectionType::Set(Box::new(INT)),
        };
        assert!(!same_type(&list(false, INT), &set));
        assert!(!same_type(&INT, &list(false, INT)));
    }
}
