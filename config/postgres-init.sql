-- Runs once when the compose database is first created: the trainer role the gpu worker logs in as.
-- Its grants (none at all on evalsets tables) are made by the migrations.
CREATE ROLE goldset_trainer LOGIN PASSWORD 'goldset_trainer';
