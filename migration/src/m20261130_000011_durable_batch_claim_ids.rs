//! Adds `batchactions_batches.claim_id` and `batchactions_jobs.finalized_by`, so that a claim or
//! a finalization whose answer was lost (the commit took effect, the reply never came) is
//! recognized by its retry instead of leaving a batch idle until it goes stale or telling the
//! finalizer it lost.

use sea_orm_migration::prelude::*;

use crate::schema::{create_index, drop_index, id_column};

/// The migration; its name is this file's stem.
#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const JOBS: &str = "batchactions_jobs";
const BATCHES: &str = "batchactions_batches";
const CLAIM_INDEX: &str = "ix_batchactions_batches_claim_id";

/// Claim and finalizer ids ([`CLAIM_ID_LEN`](crate::limit::CLAIM_ID_LEN)).
const ID_LEN: u32 = crate::limit::CLAIM_ID_LEN;

#[derive(DeriveIden)]
enum Batches {
    ClaimId,
}

#[derive(DeriveIden)]
enum Jobs {
    FinalizedBy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column(BATCHES, "claim_id").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(BATCHES))
                        .add_column(id_column(manager, Batches::ClaimId, ID_LEN).await?)
                        .to_owned(),
                )
                .await?;
        }
        // "The batch this claim id took", looked up by every claim.
        create_index(
            manager,
            BATCHES,
            Index::create()
                .name(CLAIM_INDEX)
                .table(Alias::new(BATCHES))
                .col(Batches::ClaimId)
                .to_owned(),
        )
        .await?;
        if !manager.has_column(JOBS, "finalized_by").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(JOBS))
                        .add_column(id_column(manager, Jobs::FinalizedBy, ID_LEN).await?)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_index(manager, BATCHES, CLAIM_INDEX).await?;
        if manager.has_column(BATCHES, "claim_id").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(BATCHES))
                        .drop_column(Batches::ClaimId)
                        .to_owned(),
                )
                .await?;
        }
        if manager.has_column(JOBS, "finalized_by").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(JOBS))
                        .drop_column(Jobs::FinalizedBy)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
