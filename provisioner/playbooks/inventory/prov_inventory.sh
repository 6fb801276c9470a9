#!/bin/sh
# Ansible dynamic inventory backed by prov's database:
#   ansible-inventory -i playbooks/inventory/prov_inventory.sh --list
# Needs PROV_URL/PROV_TOKEN (or a `prov login` config). Ansible calls it with
# --list or --host NAME; both are passed straight to `prov inventory ansible`.
PROV="${PROV_BIN:-prov}"
exec "$PROV" inventory ansible "$@"
