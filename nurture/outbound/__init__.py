"""Calls Nurture makes to URLs that users give it (webhook steps): checked against SSRF."""
