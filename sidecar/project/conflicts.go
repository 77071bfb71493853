package project

import (
	"fmt"
	"strings"
)

// SenderConflicts returns one error for each sender of p that another project of others already
// routes, naming that project. The entry of others named like p is p's own earlier version and is
// skipped, and so are removed projects (tombstones): a live project's senders route before theirs.
// Senders compare case-insensitively, as routing does.
func SenderConflicts(p Project, others []Project) []error {
	var errs []error
	for _, o := range others {
		if o.Name == p.Name || o.IsRemoved() {
			continue
		}
		for _, s := range p.Senders {
			for _, theirs := range o.Senders {
				if strings.EqualFold(s, theirs) {
					errs = append(errs, fmt.Errorf("sender %s already belongs to project %s", s, o.Name))
				}
			}
		}
	}
	return errs
}
