#!/bin/sh
# snapver git hook: installed by `snapver hooks install`, removed by `snapver hooks uninstall`
# (which puts back the hook that was here before, if any: it runs first, as <name>.pre-snapver).
#
# Most Git commands fire these hooks; the shell below decides whether Python is needed at
# all, so that a fetch or a soft reset costs one `git rev-parse`, not an interpreter start.
# snapver never makes Git fail: the exit status is the chained hook's, or 0.
SNAPVER_PYTHON='@PYTHON@'
hook=${0##*/}
here=${0%/*}
status=0

case $hook in
  post-rewrite|reference-transaction|pre-push) input=$(cat) ;;  # these read stdin: keep it for both
  *) input= ;;
esac
if [ -x "$here/$hook.pre-snapver" ]; then
  if [ -n "$input" ]; then
    printf '%s\n' "$input" | "$here/$hook.pre-snapver" "$@" || status=$?
  else
    "$here/$hook.pre-snapver" "$@" || status=$?
  fi
fi

[ "${SNAPVER_SKIP:-0}" = 0 ] || exit $status
# What can be decided from the arguments alone costs no process at all.
case $hook in
  reference-transaction) [ "$1" = committed ] || exit $status ;;
  post-index-change) [ "$1" = 1 ] || exit $status ;;
  post-checkout) [ "$3" = 1 ] || exit $status ;;
esac
# Git runs hooks at the top of the working tree; there, a .git folder is the Git directory
# unless GIT_DIR says otherwise. Anything else (a linked worktree's .git file, GIT_DIR, a
# push running hooks inside the Git directory) asks Git: a fork and exec of git is ~3 ms.
if [ -z "${GIT_DIR:-}" ] && [ -d .git ]; then
  gitdir=$PWD/.git
else
  gitdir=$(git rev-parse --absolute-git-dir 2>/dev/null) || exit $status
fi
state=$gitdir/snapver
# Git runs hooks at the top of the working tree. Whether snapver.toml opts in to the remote
# integration ([remote] push / fetch = true) is Python's to say (it reads the file as every
# command does). The shell only spares a push the interpreter when snapver.toml cannot opt
# in: a TOML true is the word `true`, however the key is written (quoted, dotted, inline).
may_opt_in() { grep -qs true snapver.toml; }
run() {
  printf '%s' "$input" | "$SNAPVER_PYTHON" -m snapver.githooks "$hook" "$@"
}

# In the middle of a rebase HEAD walks through commits the lake must not follow;
# post-rewrite, which runs as the rebase finishes, gives the new commits snapshots and
# moves the lake. One exception: `rebase -i` stopped at an `edit`, where the user works
# on that commit. Git marks the stop by writing REBASE_HEAD with stopped-sha present,
# and the last command done is the edit: then the lake goes to the commit being edited,
# and a commit made during the stop (`amend` is there) is snapshotted as any other.
# Leaving a stop other than by --continue deletes REBASE_HEAD: the lake follows HEAD.
# A rebase whose todo list picks nothing (every commit already upstream) runs no post-rewrite:
# the checkout of the new base is its end, and the lake follows HEAD there.
picks_nothing() {  # the todo list has no command but noop and drop: a `read` loop, no process
  while read -r cmd rest; do
    case $cmd in ''|'#'*|noop|drop|d) ;; *) return 1 ;; esac
  done < "$gitdir/rebase-merge/git-rebase-todo"
  return 0
}
if [ "$hook" != post-rewrite ] && { [ -d "$gitdir/rebase-merge" ] || [ -d "$gitdir/rebase-apply" ]; }; then
  [ -d "$state" ] || exit $status
  case $hook in
    post-commit)
      [ -f "$gitdir/rebase-merge/amend" ] && run "$@" ;;
    post-checkout)
      [ "$3" = 1 ] && [ -f "$gitdir/rebase-merge/git-rebase-todo" ] && picks_nothing && run "$@" ;;
    reference-transaction)
      if [ "$1" = committed ] && [ -f "$gitdir/rebase-merge/stopped-sha" ]; then
        z=0000000000000000000000000000000000000000
        case "$input" in
          *"$z $z REBASE_HEAD"*)
            # Deleted while stopped: `--abort` (HEAD is back where the rebase began), `--skip`
            # or `--quit`. The lake may have gone to an edit: it follows HEAD again.
            run "$@" ;;
          *" REBASE_HEAD"*)
            last=
            while read -r line; do last=$line; done < "$gitdir/rebase-merge/done"
            case $last in
              "edit "*|"e "*) printf '%s' "$last" | "$SNAPVER_PYTHON" -m snapver.githooks rebase-edit ;;
            esac ;;
        esac
      fi ;;
  esac
  exit $status
fi

if [ ! -d "$state" ]; then
  # A new worktree of a repository whose main worktree has a lake gets its own.
  if [ "$hook" = post-checkout ] && [ "$3" = 1 ] &&
     [ -d "$(git rev-parse --path-format=absolute --git-common-dir)/snapver" ]; then
    run "$@"
  fi
  exit $status
fi

# Files are read with `read`, a builtin, and ref updates matched with `case`: no process.
lake_is_at() {  # $1: the commit HEAD is at now (post-checkout is given it)
  at=
  read -r at 2>/dev/null < "$state/lake-at"
  [ "$1" = "$at" ]
}
nl='
'
links_ok() {  # every volume snapver linked is still a symlink: a `test -L` each, no process
  [ -r "$state/links" ] || return 0
  while IFS= read -r v; do
    [ -z "$v" ] || [ -L "$v" ] || return 1
  done < "$state/links"
  return 0
}

case $hook in
  post-commit)
    # The commit this hook fired for, read now with the `read` builtin (no process): by the
    # time Python holds the workspace lock, another commit in this working tree may have
    # moved HEAD on. A packed or unusual ref is asked of Git.
    head= commit=
    read -r head 2>/dev/null < "$gitdir/HEAD"
    case $head in
      "ref: refs/"*)
        common=$gitdir
        [ -f "$gitdir/commondir" ] && { read -r common < "$gitdir/commondir"; case $common in /*) ;; *) common=$gitdir/$common ;; esac; }
        read -r commit 2>/dev/null < "$common/${head#ref: }" ;;
      *) commit=$head ;;
    esac
    case $commit in
      *[!0-9a-f]*|'') commit=$(git rev-parse -q --verify HEAD) ;;
    esac
    [ ${#commit} = 40 ] || commit=$(git rev-parse -q --verify HEAD)
    export SNAPVER_COMMIT="$commit"
    run "$@" ;;
  post-rewrite)
    run "$@" ;;
  post-index-change)
    # $1=1 only when the command rewrote the working tree (checkout, switch, merge,
    # reset --hard); the reference-transaction that moves HEAD comes next, in the same
    # Git process. reset --soft and --mixed leave the working tree, and so the lake, alone.
    [ "$1" = 1 ] && echo "$PPID" > "$state/worktree-updated" ;;
  reference-transaction)
    # One command commits several transactions (ORIG_HEAD first, then HEAD): the marker
    # stays until the one that updates HEAD itself, which `reset --hard` does even to the
    # same commit and `checkout -b` does not. A marker from another command is stale.
    if [ "$1" = committed ] && [ -f "$state/worktree-updated" ]; then
      marker=
      read -r marker 2>/dev/null < "$state/worktree-updated"
      if [ "$marker" != "$PPID" ]; then
        rm -f "$state/worktree-updated"
      else
        case "$input$nl" in
          *" HEAD$nl"*)
            run "$@"
            rm -f "$state/worktree-updated" ;;
        esac
      fi
    fi
    # A tag just created (its old ID all zeros) may become a release: a pattern match here,
    # so that every other ref update costs no interpreter start; Python checks the details.
    if [ "$1" = committed ]; then
      case $input in
        *"0000000000000000000000000000000000000000 "*" refs/tags/"*)
          printf '%s' "$input" | "$SNAPVER_PYTHON" -m snapver.githooks tag-release ;;
      esac
    fi ;;
  post-checkout)
    # Also when a volume's link is gone (a checkout of a commit that tracked the folder, and back).
    [ "$3" = 1 ] && { ! lake_is_at "$2" || ! links_ok; } && run "$@" ;;
  post-merge)
    { lake_is_at "$(git rev-parse -q --verify HEAD)" && links_ok; } || run "$@" ;;
  pre-push)
    may_opt_in && run "$@" ;;
esac
exit $status
