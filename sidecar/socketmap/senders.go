package socketmap

import (
	"context"
	"errors"
	"fmt"

	"github.com/postern/postern/sidecar/project"
)

// SendersMap is the map name Postern serves: Postfix's
// `sender_dependent_default_transport_maps = socketmap:unix:<path>:senders`.
const SendersMap = "senders"

// Resolver finds the project serving a sender without treating "none" as an error
// (*directory.Directory).
type Resolver interface {
	Lookup(ctx context.Context, sender string) (p project.Project, found bool, err error)
}

// Senders answers the "senders" map: Transport for every sender a project serves (enabled or not: a
// disabled project's mail still goes to Postern, which defers it), NOTFOUND for every other sender,
// so unrelated mail never touches Postern.
//
// A removed project's senders keep getting Transport while its tombstone is held (see package
// directory): Postern then answers their mail 451 4.7.0 at MAIL FROM, and Postfix keeps it queued
// with that reason in its log. TEMP would keep it queued too, but every lookup by cleanup, smtpd
// and the queue manager would then fail as a table error (submissions refused with "Temporary
// lookup failure", the reason in Postfix's log a generic resolver failure), instead of the one
// deferral that names the project.
type Senders struct {
	Resolver Resolver
	// Transport is the Postfix transport that delivers to Postern, e.g.
	// "lmtp:unix:/run/postern/lmtp.sock" or the name of a master.cf service.
	Transport string
}

// Lookup implements Server.Lookup.
func (s Senders) Lookup(ctx context.Context, mapName, key string) (string, bool, error) {
	if mapName != SendersMap {
		return "", false, fmt.Errorf("map %q: %w (this server serves %q)", mapName, ErrUnknownMap, SendersMap)
	}
	if s.Transport == "" {
		return "", false, errors.New("no transport configured for the senders map")
	}
	_, found, err := s.Resolver.Lookup(ctx, key)
	if err != nil {
		return "", false, fmt.Errorf("looking up sender %q: %w", key, err)
	}
	if !found {
		return "", false, nil
	}
	return s.Transport, true, nil
}
