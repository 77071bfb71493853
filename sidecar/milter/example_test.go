package milter_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/postern/postern/sidecar/milter"
	"github.com/postern/postern/sidecar/project"
)

var errUnknownSender = errors.New("no project")

type oneProject struct{ p project.Project }

func (o oneProject) Resolve(_ context.Context, sender string) (project.Project, error) {
	if strings.EqualFold(sender, o.p.Senders[0]) {
		return o.p, nil
	}
	return project.Project{}, fmt.Errorf("sender %s: %w", sender, errUnknownSender)
}

func (o oneProject) ServesDomain(domain string) bool {
	return strings.HasSuffix(o.p.Senders[0], "@"+domain)
}

// A milter on loopback answers what Postfix would pass on to the submitting application.
func ExampleServer_Serve() {
	dir := oneProject{project.Project{Name: "client-a", Enabled: true, Senders: []string{"noreply@client-a.example"}}}
	srv, err := milter.New(milter.Options{
		Resolver:    dir,
		Domains:     dir,
		IsNoProject: func(err error) bool { return errors.Is(err, errUnknownSender) },
	})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	client := gomilter.NewClientWithOptions("tcp", ln.Addr().String(), gomilter.ClientOptions{
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
		ActionMask:   gomilter.OptAddHeader, // a version 2 mask
	})
	s, err := client.Session()
	if err != nil {
		panic(err)
	}
	defer s.Close()
	for _, sender := range []string{"someone@elsewhere.example", "stranger@client-a.example"} {
		act, err := s.Mail(sender, nil)
		if err != nil {
			panic(err)
		}
		if act.Code == gomilter.ActAccept {
			fmt.Printf("%s: accepted, nothing more asked\n", sender)
		} else {
			fmt.Printf("%s: %d %s\n", sender, act.SMTPCode, act.SMTPText)
		}
		s.Abort()
	}
	// Output:
	// someone@elsewhere.example: accepted, nothing more asked
	// stranger@client-a.example: 550 5.7.1 sender <stranger@client-a.example> is not served by Postern
}
