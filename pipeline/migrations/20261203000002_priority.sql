-- A requester's scheduling priority: its stage pods run under the matching PriorityClass
-- (`high` may preempt lower-priority pods on a full pool, `low` never preempts), and under the
-- dispatcher's GPU cap a higher priority takes the next free GPU first. NULL inherits the
-- defaults row (`*`); NULL there means normal.
ALTER TABLE requesters ADD COLUMN priority TEXT CHECK (priority IN ('high', 'normal', 'low'));
