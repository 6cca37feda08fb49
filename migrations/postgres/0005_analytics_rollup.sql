-- Version 5 on SQLite rolls the hourly analytics totals up from the events once a second. On
-- PostgreSQL, where replicas' analytics consumers insert events concurrently and rows do not
-- become visible in the order of their keys, the insert trigger of version 3 keeps the totals in
-- the insert's own transaction, so nothing changes here; the version exists so both databases
-- carry the same ones.
SELECT 1;
