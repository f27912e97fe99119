//! Creates `batchactions_jobs`, `batchactions_batches` and `batchactions_records`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, boolean, integer, json, string_len, string_len_null,
};

use crate::schema::{create_index, create_partial_index, long_text_null};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const JOBS: &str = "batchactions_jobs";
const BATCHES: &str = "batchactions_batches";
const RECORDS: &str = "batchactions_records";

/// Ids are application-chosen strings ([`BATCH_ID_LEN`](crate::limit::BATCH_ID_LEN)).
const ID_LEN: u32 = crate::limit::BATCH_ID_LEN;

#[derive(DeriveIden)]
enum Jobs {
    Id,
    Status,
    Config,
    Batches,
    TotalRecords,
    StartedAt,
    CompletedAt,
    Distributed,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Batches {
    Id,
    JobId,
    BatchIndex,
    Status,
    WorkerId,
    ClaimedAt,
    HeartbeatAt,
    RecordStartIndex,
    RecordEndIndex,
    ProcessedCount,
    FailedCount,
    Version,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
}

#[derive(DeriveIden)]
enum Records {
    JobId,
    RecordIndex,
    BatchId,
    Status,
    Raw,
    Parsed,
    Errors,
    ProcessingError,
    RetryCount,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new(JOBS))
                    .if_not_exists()
                    .col(string_len(Jobs::Id, ID_LEN).primary_key())
                    .col(string_len(Jobs::Status, 20))
                    .col(json(Jobs::Config))
                    .col(json(Jobs::Batches))
                    .col(big_integer(Jobs::TotalRecords).default(0))
                    .col(big_integer_null(Jobs::StartedAt))
                    .col(big_integer_null(Jobs::CompletedAt))
                    .col(boolean(Jobs::Distributed).default(false))
                    .col(big_integer(Jobs::CreatedAt))
                    .col(big_integer(Jobs::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Alias::new(BATCHES))
                    .if_not_exists()
                    .col(string_len(Batches::Id, ID_LEN).primary_key())
                    .col(string_len(Batches::JobId, ID_LEN))
                    .col(integer(Batches::BatchIndex))
                    .col(string_len(Batches::Status, 20).default("PENDING"))
                    .col(string_len_null(Batches::WorkerId, ID_LEN))
                    .col(big_integer_null(Batches::ClaimedAt))
                    .col(big_integer_null(Batches::HeartbeatAt))
                    .col(big_integer(Batches::RecordStartIndex).default(0))
                    .col(big_integer(Batches::RecordEndIndex).default(0))
                    .col(big_integer(Batches::ProcessedCount).default(0))
                    .col(big_integer(Batches::FailedCount).default(0))
                    .col(big_integer(Batches::Version).default(0))
                    .col(big_integer(Batches::CreatedAt))
                    .col(big_integer(Batches::UpdatedAt))
                    .col(big_integer_null(Batches::CompletedAt))
                    .to_owned(),
            )
            .await?;
        // Claim order and the uniqueness of a batch position within its job.
        create_index(
            manager,
            BATCHES,
            Index::create()
                .name("ux_batchactions_batches_job_id_batch_index")
                .table(Alias::new(BATCHES))
                .col(Batches::JobId)
                .col(Batches::BatchIndex)
                .unique()
                .to_owned(),
        )
        .await?;
        // "Pending batches of a job in index order", the claim's candidate scan.
        create_partial_index(
            manager,
            BATCHES,
            Index::create()
                .name("ix_batchactions_batches_pending")
                .table(Alias::new(BATCHES))
                .col(Batches::JobId)
                .col(Batches::BatchIndex)
                .to_owned(),
            ("status", "PENDING"),
            Index::create()
                .name("ix_batchactions_batches_pending")
                .table(Alias::new(BATCHES))
                .col(Batches::JobId)
                .col(Batches::Status)
                .col(Batches::BatchIndex)
                .to_owned(),
        )
        .await?;

        let mut processing_error = long_text_null(manager, Records::ProcessingError);
        manager
            .create_table(
                Table::create()
                    .table(Alias::new(RECORDS))
                    .if_not_exists()
                    .col(string_len(Records::JobId, ID_LEN))
                    .col(big_integer(Records::RecordIndex))
                    .col(string_len(Records::BatchId, ID_LEN))
                    .col(string_len(Records::Status, 16))
                    .col(json(Records::Raw))
                    .col(json(Records::Parsed))
                    .col(json(Records::Errors))
                    .col(&mut processing_error)
                    .col(integer(Records::RetryCount).default(0))
                    .col(big_integer(Records::UpdatedAt))
                    // The upsert key of a record outcome, and "records of a job in index order".
                    .primary_key(
                        Index::create()
                            .name("pk_batchactions_records")
                            .col(Records::JobId)
                            .col(Records::RecordIndex),
                    )
                    .to_owned(),
            )
            .await?;
        // "Records of a job by status in index order" (failed/pending/processed reads, paged).
        create_index(
            manager,
            RECORDS,
            Index::create()
                .name("ix_batchactions_records_job_id_status")
                .table(Alias::new(RECORDS))
                .col(Records::JobId)
                .col(Records::Status)
                .col(Records::RecordIndex)
                .to_owned(),
        )
        .await?;
        // "Records of a batch in index order" (a worker loading its claimed batch).
        create_index(
            manager,
            RECORDS,
            Index::create()
                .name("ix_batchactions_records_job_id_batch_id")
                .table(Alias::new(RECORDS))
                .col(Records::JobId)
                .col(Records::BatchId)
                .col(Records::RecordIndex)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping a table drops its indexes on every backend.
        for table in [RECORDS, BATCHES, JOBS] {
            manager
                .drop_table(
                    Table::drop()
                        .table(Alias::new(table))
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
