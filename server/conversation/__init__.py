"""The conversation layer every chat protocol shares; it knows no wire format.

A protocol translates its request into a :class:`~server.conversation.types.Conversation` (turns, tool
declarations and choice, output format), :func:`~server.conversation.plan.plan` turns that into the
prompt's messages and the constraint on the output, and :class:`~server.conversation.reply.Reply`
turns the generated text back into neutral events (text, tool call start / argument fragment / end)
that the protocol writes in its own shape.
"""
