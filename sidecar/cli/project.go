package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/postern/postern/sidecar/advice"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/store"
)

// The project commands: `postern project add|update|list|show|remove|purge|disable|enable`, one
// file each (project_add.go, project_list.go, project_remove.go, project_enable.go), with the
// settings flags of add and update in project_flags.go and the reading of secrets in secret.go.

const projectAbout = `
A project is one client organisation's sending mailbox: the envelope senders routed through it, the
upstream mail server it delivers to and how Postern signs in there.`

func (a *App) projectCommand() *cobra.Command {
	return group("project", "add, update, list, show, remove, enable or disable projects", projectAbout,
		a.projectAddCommand(),
		a.projectUpdateCommand(),
		a.projectListCommand(),
		a.projectShowCommand(),
		a.projectRemoveCommand(),
		a.projectPurgeCommand(),
		a.projectEnableCommand(false),
		a.projectEnableCommand(true),
	)
}

// ExplainNotFound says how to list the projects when err is store.ErrNotFound for project name.
func ExplainNotFound(err error, name string) error {
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("no project named %s ('postern project list' shows them)", name)
	}
	return err
}

// removedError says what to do with a removed project instead of changing it.
func removedError(p project.Project) error {
	return fmt.Errorf("project %s was removed at %s: add it again with 'postern project add %s ...', or delete it for good with 'postern project purge %s'",
		p.Name, p.Removed.Local().Format(time.RFC1123), p.Name, p.Name)
}

// nextStep says how an OAuth project's mailbox gets signed in (package advice).
func nextStep(p project.Project, signInURL string) string { return advice.SignIn(p, signInURL) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
