//! What every stored status type (and [`MissedTicks`](crate::task::MissedTicks), stored the same way)
//! shares: its strings are derived by `strum`, written once per type (a case rule, and a
//! `serialize` only where a name differs from the rule), and `as_str`, `ALL`, `Display`,
//! `FromStr` and serde all go through them, so the column, the JSON and the text can never
//! disagree.

use crate::error::UnknownStatus;

/// The error of a status type's `FromStr` (the `parse_err_fn` of its `EnumString` derive).
pub(crate) fn unknown(s: &str) -> UnknownStatus {
    UnknownStatus(s.to_owned())
}

/// Declares a status enum whose stored strings come from its `#[strum(...)]` attributes, with
/// `ALL`, `as_str`, `Display`, `FromStr` (failing with [`UnknownStatus`]) and serde through the
/// same strings.
macro_rules! status_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident,)+
        }
    ) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            strum::IntoStaticStr,
            strum::EnumString,
            strum::Display,
            strum::VariantArray,
        )]
        $(#[$meta])*
        #[strum(
            parse_err_ty = crate::error::UnknownStatus,
            parse_err_fn = crate::status::unknown
        )]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = <$name as ::strum::VariantArray>::VARIANTS;

            /// The string stored in the database and in JSON.
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        // Serde goes through the strum strings rather than a second list of renames.
        impl ::serde::Serialize for $name {
            fn serialize<S>(&self, serializer: S) -> ::core::result::Result<S::Ok, S::Error>
            where
                S: ::serde::Serializer,
            {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D>(deserializer: D) -> ::core::result::Result<Self, D::Error>
            where
                D: ::serde::Deserializer<'de>,
            {
                let text = <String as ::serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use status_enum;

#[cfg(test)]
mod tests {
    use std::fmt::Debug;
    use std::str::FromStr;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::batch::{BatchStatus, JobStatus, RecordStatus};
    use crate::error::UnknownStatus;
    use crate::task::{MissedTicks, TaskExecutionStatus};

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    /// Every value of a status type round trips through its string, `Display` and JSON, and an
    /// unknown string is an [`UnknownStatus`]; returns the strings in declaration order.
    fn round_trips<T>(all: &[T], as_str: fn(T) -> &'static str) -> TestResult<Vec<&'static str>>
    where
        T: Copy + PartialEq + Debug + ToString + Serialize + DeserializeOwned,
        T: FromStr<Err = UnknownStatus>,
    {
        let mut strings = Vec::new();
        for &status in all {
            let text = as_str(status);
            assert_eq!(text.parse::<T>()?, status);
            assert_eq!(status.to_string(), text);
            let json = serde_json::to_string(&status)?;
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<T>(&json)?, status);
            // From a `Value` too, which hands over an owned string rather than a borrowed one.
            let value = serde_json::Value::String(text.to_owned());
            assert_eq!(serde_json::from_value::<T>(value)?, status);
            strings.push(text);
        }
        assert_eq!(
            "no such status".parse::<T>(),
            Err(UnknownStatus("no such status".to_owned()))
        );
        assert!(serde_json::from_str::<T>("\"no such status\"").is_err());
        Ok(strings)
    }

    #[test]
    fn every_status_round_trips_through_its_stored_string_and_json() -> TestResult {
        // The stored strings are the upstream names: they must never change.
        assert_eq!(
            round_trips(TaskExecutionStatus::ALL, TaskExecutionStatus::as_str)?,
            [
                "ready",
                "running",
                "failed",
                "timed_out",
                "waiting_for_children_tasks",
                "children_tasks_failed",
                "waiting_for_finalize_task",
                "finalize_task_failed",
                "completed",
                "cancelled",
                "sleeping",
            ]
        );
        assert_eq!(
            round_trips(JobStatus::ALL, JobStatus::as_str)?,
            [
                "CREATED",
                "PREVIEWING",
                "PREVIEWED",
                "PROCESSING",
                "PAUSED",
                "COMPLETED",
                "ABORTED",
                "FAILED",
            ]
        );
        assert_eq!(
            round_trips(BatchStatus::ALL, BatchStatus::as_str)?,
            ["PENDING", "PROCESSING", "PAUSED", "COMPLETED", "FAILED"]
        );
        assert_eq!(
            round_trips(RecordStatus::ALL, RecordStatus::as_str)?,
            ["valid", "invalid", "processed", "failed", "pending"]
        );
        assert_eq!(
            round_trips(MissedTicks::ALL, MissedTicks::as_str)?,
            ["skip", "catch_up"]
        );
        Ok(())
    }
}
