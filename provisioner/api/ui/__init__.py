"""The web console at /ui (issue 16, items 3 and 4): server-rendered pages, cookie sessions, live updates.

* session.py: login with an API token into a signed session cookie, CSRF tokens, the scope check;
* pages.py: the read-only pages (racks, hosts, host, tasks, profiles) and the login form;
* actions.py: the host actions, calling what the REST routes call;
* live.py: ``/ui/events``, the event stream (provisioner/events_stream.py) behind the cookie.

Every route here is ``include_in_schema=False``: the console is no part of the REST API.
"""
