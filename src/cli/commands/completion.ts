/**
 * `ns8ctl completion bash|zsh`: a shell completion script generated from the command tree itself,
 * so it always lists exactly the commands, subcommands and options this build has (like kubectl's
 * and gh's). Options that take a value complete file names, or their fixed choices when the help
 * names them (`-o table|wide|json|yaml`).
 */
import type { Command, Option } from 'commander';
import { UsageError } from '../../errors.js';

/** One node of the tree as the script needs it. */
interface CompletionNode {
  /** Space-joined command path below the root ('' for the root, 'sandbox create', ...). */
  path: string;
  subcommands: string[];
  options: string[];
  /** Options that take a value, with their fixed choices (empty: complete file names). */
  valued: Map<string, string[]>;
}

/** Shells a script is generated for. */
export const COMPLETION_SHELLS = ['bash', 'zsh'] as const;

const CHOICES_IN_HELP = /\b((?:[a-z][a-z-]*)(?:(?:, | or | \| |\|)[a-z][a-z-]*)+)\b/;

/** The fixed values an option documents (`'table, wide, json or yaml'`), else none. */
function choicesOf(o: Option): string[] {
  if (o.argChoices?.length) return [...o.argChoices];
  if (!/format/.test(o.flags)) return [];
  const m = CHOICES_IN_HELP.exec(o.description ?? '');
  return m ? m[1]!.split(/, | or | \| |\|/) : [];
}

function optionWords(o: Option): string[] {
  return [o.short, o.long].filter((f): f is string => Boolean(f));
}

/** Walks the tree depth-first; hidden commands and `help` are left out. */
export function completionTree(root: Command): CompletionNode[] {
  const out: CompletionNode[] = [];
  const visit = (cmd: Command, path: string): void => {
    const subs = cmd.commands.filter((c) => c.name() !== 'help' && !(c as unknown as { _hidden?: boolean })._hidden);
    const valued = new Map<string, string[]>();
    const options: string[] = ['--help'];
    for (const o of cmd.options as readonly Option[]) {
      if (o.hidden) continue;
      const words = optionWords(o);
      options.push(...words);
      if (o.required || o.optional) for (const w of words) valued.set(w, choicesOf(o));
    }
    out.push({ path, subcommands: subs.map((c) => c.name()), options: [...new Set(options)], valued });
    for (const c of subs) visit(c, path ? `${path} ${c.name()}` : c.name());
  };
  visit(root, '');
  return out;
}

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/** The bash script: `_ns8ctl` finds the deepest command path on the line, then offers its words. */
export function renderBashCompletion(nodes: CompletionNode[], prog = 'ns8ctl'): string {
  const fn = `_${prog.replace(/[^A-Za-z0-9_]/g, '_')}`;
  const subsCases = nodes.map((n) => `    ${quote(n.path)}) echo ${quote(n.subcommands.join(' '))} ;;`).join('\n');
  const optsCases = nodes.map((n) => `    ${quote(n.path)}) echo ${quote(n.options.join(' '))} ;;`).join('\n');
  const valuedCases = nodes
    .flatMap((n) => [...n.valued].map(([opt, choices]) => `    ${quote(`${n.path}|${opt}`)}) echo ${quote(choices.length ? choices.join(' ') : '@files')} ;;`))
    .join('\n');
  const globalValued = nodes.find((n) => n.path === '')?.valued ?? new Map<string, string[]>();
  return `# ${prog} bash completion. Load it with: source <(${prog} completion bash)
# or install it: ${prog} completion bash > /etc/bash_completion.d/${prog}
${fn}_subcommands() {
  case "$1" in
${subsCases}
  esac
}
${fn}_options() {
  case "$1" in
${optsCases}
  esac
}
${fn}_values() {
  case "$1" in
${valuedCases}
    *) return 1 ;;
  esac
}
${fn}() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" prev="" path="" w i skip=0 vals
  [ "$COMP_CWORD" -gt 0 ] && prev="\${COMP_WORDS[COMP_CWORD-1]}"
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    case "$w" in
      --*=*) continue ;;
      -*) if ${fn}_values "$path|$w" >/dev/null || ${fn}_values "|$w" >/dev/null; then skip=1; fi; continue ;;
    esac
    case " $(${fn}_subcommands "$path") " in
      *" $w "*) path="\${path:+$path }$w" ;;
    esac
  done
  if vals=$(${fn}_values "$path|$prev" || ${fn}_values "|$prev"); then
    if [ "$vals" = "@files" ]; then
      COMPREPLY=($(compgen -f -- "$cur"))
    else
      COMPREPLY=($(compgen -W "$vals" -- "$cur"))
    fi
    return 0
  fi
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(${fn}_options "$path")${globalValued.size ? ` $(${fn}_options '')` : ''}" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$(${fn}_subcommands "$path")" -- "$cur"))
    [ \${#COMPREPLY[@]} -eq 0 ] && COMPREPLY=($(compgen -f -- "$cur"))
  fi
  return 0
}
complete -o filenames -F ${fn} ${prog}
`;
}

/** zsh runs the same function through bashcompinit, so both shells offer the same words. */
export function renderZshCompletion(nodes: CompletionNode[], prog = 'ns8ctl'): string {
  return `#compdef ${prog}
# ${prog} zsh completion. Load it with: source <(${prog} completion zsh)
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
${renderBashCompletion(nodes, prog)}`;
}

/**
 * Prints the completion script for `shell`.
 * @throws UsageError for a shell other than bash or zsh.
 */
export function completionCommand(shell: string, root: Command, stdout: (t: string) => void): number {
  const nodes = completionTree(root);
  if (shell === 'bash') stdout(renderBashCompletion(nodes));
  else if (shell === 'zsh') stdout(renderZshCompletion(nodes));
  else throw new UsageError(`unknown shell ${JSON.stringify(shell)}: ns8ctl completion supports ${COMPLETION_SHELLS.join(', ')}`);
  return 0;
}
