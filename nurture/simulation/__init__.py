"""Simulating a journey in virtual time, before launch (docs/simulation.md).

script.py     what is asked: test contacts and their scripted behaviour
prepare.py    what is read from the database first (never written): the journey, templates,
              the existing contacts copied
runner.py     the real `JourneyEnrollment` on a time-skipping test server of its own
behaviour.py  the workflow that plays each contact's script against its enrollment
standins.py   the activities, on an in-memory contact: nothing is sent or stored
report.py     what is answered, per contact
"""
