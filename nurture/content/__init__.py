"""Message content: rendering templates (sandboxed Jinja2), checking them, loading them.

`rendering` turns a stored template and a contact into the subject/html/text a channel sends;
`checks` finds what would fail or render wrongly before a template is saved or published;
`loading` reads the current (or a given) version of a template for the send path.
"""
