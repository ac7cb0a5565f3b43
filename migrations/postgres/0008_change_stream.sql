-- Processes now tell each other what they committed from the store's change
-- stream, in batches sent after the commit, instead of from triggers inside
-- each transaction: a NOTIFY in a transaction takes a lock every committing
-- transaction of the database queues on. A process killed between its
-- commit and its signal loses nobody anything but time: the others poll.
DROP TRIGGER messages_hub_signal ON messages;
DROP TRIGGER threads_hub_signal ON threads;
DROP TRIGGER inbox_items_hub_signal ON inbox_items;
DROP TRIGGER workflow_runs_hub_signal_insert ON workflow_runs;
DROP TRIGGER workflow_runs_hub_signal ON workflow_runs;
DROP FUNCTION hub_signal_message();
DROP FUNCTION hub_signal_row();

-- The poll's look at inbox items changed since its last one.
CREATE INDEX inbox_items_by_update ON inbox_items (updated_at);
