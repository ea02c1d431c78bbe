//! Columns of a trigger's tuple: found by name once per call, read as PostgreSQL's text output.
//! Thread keys and primary keys travel as text whatever their type, so the payload and
//! `threadcast.counters` agree on one rendering.

use std::ffi::CStr;
use std::num::NonZeroUsize;

use pgrx::pg_sys;

/// A tuple and the descriptor that reads it, as a trigger receives them.
#[derive(Clone, Copy)]
pub struct RawRow {
    pub tuple: pg_sys::HeapTuple,
    pub desc: pg_sys::TupleDesc,
}

/// Where a named column sits, and how to print it.
pub struct Column {
    attno: NonZeroUsize,
    type_oid: pg_sys::Oid,
}

impl Column {
    /// Finds `name` among the descriptor's live columns; `None` when there is none.
    pub fn find(desc: pg_sys::TupleDesc, name: &str) -> Option<Column> {
        // SAFETY: the descriptor comes from the trigger's open relation.
        let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(desc) };
        desc.iter()
            .enumerate()
            .find(|(_, att)| !att.attisdropped && att.name() == name)
            .map(|(i, att)| Column {
                attno: NonZeroUsize::new(i + 1).unwrap(),
                type_oid: att.atttypid,
            })
    }

    /// The column's 1-based attribute number.
    pub fn attno(&self) -> NonZeroUsize {
        self.attno
    }

    /// The raw datum, `None` for SQL NULL.
    pub fn datum(&self, row: RawRow) -> Option<pg_sys::Datum> {
        // SAFETY: attno was found in this row's own descriptor.
        unsafe { pgrx::heap_getattr_raw(row.tuple, self.attno, row.desc) }
    }

    /// The column's value as text, `None` for SQL NULL.
    pub fn text(&self, row: RawRow) -> Option<String> {
        let datum = self.datum(row)?;
        let mut output_fn = pg_sys::InvalidOid;
        let mut is_varlena = false;
        // SAFETY: the type comes from a live descriptor; its output function returns a palloc'd
        // C string that we copy and free.
        unsafe {
            pg_sys::getTypeOutputInfo(self.type_oid, &mut output_fn, &mut is_varlena);
            let cstr = pg_sys::OidOutputFunctionCall(output_fn, datum);
            let text = CStr::from_ptr(cstr).to_string_lossy().into_owned();
            pg_sys::pfree(cstr.cast());
            Some(text)
        }
    }
}
