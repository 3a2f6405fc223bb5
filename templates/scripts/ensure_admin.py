"""Create (or, with reset, re-password) the Label Studio admin. Reads {"email", "password", "reset"}
as JSON on stdin so the password never appears in argv, the environment or a log. Runs with the
service's venv python, as the service user, with the service's env file loaded."""

import json
import os
import sys

import label_studio

sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "label_studio.core.settings.label_studio")

import django  # noqa: E402

django.setup()

from django.db import transaction  # noqa: E402
from organizations.models import Organization  # noqa: E402
from users.models import User  # noqa: E402

request = json.load(sys.stdin)
email, password, reset = request["email"], request.get("password"), request.get("reset", False)

with transaction.atomic():
    user = User.objects.filter(email=email).first()
    if user is not None:
        if reset:
            user.set_password(password)
            user.save(update_fields=["password"])
            outcome = "password-reset"
        else:
            outcome = "exists"
    else:
        # The same steps as label-studio's own first-user creation (server._create_user).
        user = User.objects.create_user(email=email, password=password)
        user.is_staff = True
        user.is_superuser = True
        user.save()
        org = Organization.objects.first()
        if org is None:
            org = Organization.create_organization(created_by=user, title="Label Studio")
        else:
            org.add_user(user)
        user.active_organization = org
        user.save(update_fields=["active_organization"])
        outcome = "created"

print("RESULT " + json.dumps({"outcome": outcome, "users": User.objects.count()}))
