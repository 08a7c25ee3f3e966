//! The supervisor's transitions as a spec: every command in every state, a crash in
//! every state with a process, backoff, adoption, start-up, the reconciler and the
//! manager's shutdown. No process, no database, no clock but explicit instants.

use super::*;
use crate::supervisor::error::StopError;

const ALL: [Status; 7] = Status::ALL;
const NOT_LIVE: [Status; 5] = [
    Status::Stopped,
    Status::Starting,
    Status::Stopping,
    Status::Backoff,
    Status::Error,
];

fn policy() -> RestartPolicy {
    RestartPolicy {
        delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        jitter: 0.0,
        stable_after: Duration::from_secs(60),
        max_crashes: 5,
    }
}

fn ctx() -> Ctx {
    Ctx {
        now: Instant::now(),
        policy: policy(),
        stop_on_exit: false,
        process: false,
        linked: false,
        started_at: None,
        shutting_down: false,
        jitter: 0.5,
        fresh_id: Uuid::from_u128(7),
    }
}

/// With an executor process (and its control link).
fn with_process() -> Ctx {
    Ctx {
        process: true,
        linked: true,
        ..ctx()
    }
}

fn machine(status: Status) -> Machine {
    Machine::new(status, DesiredState::Running, false)
}

/// A machine in `status` that has been up since `ctx.now` when live.
fn at(status: Status, ctx: &Ctx) -> Machine {
    let mut m = machine(status);
    m.state = match status {
        Status::Running => State::Running {
            since: Some(ctx.now),
        },
        Status::Paused => State::Paused {
            since: Some(ctx.now),
        },
        Status::Stopping => State::Stopping {
            since: Some(ctx.now),
        },
        Status::Backoff => State::Backoff {
            until: Some(ctx.now),
        },
        _ => m.state,
    };
    m
}

const CMD: Uuid = Uuid::from_u128(42);

fn command(kind: CommandKind) -> Event {
    Event::Command(Command {
        id: CMD,
        kind,
        global: false,
        recovered_from: None,
        superseded: false,
    })
}

fn global(kind: CommandKind) -> Event {
    Event::Command(Command {
        id: CMD,
        kind,
        global: true,
        recovered_from: None,
        superseded: false,
    })
}

fn stop_kind() -> CommandKind {
    CommandKind::Stop {
        timeout: Duration::from_secs(4),
        mode: StopMode::Leave,
    }
}

fn restart_kind() -> CommandKind {
    CommandKind::Restart {
        timeout: Duration::from_secs(4),
        mode: StopMode::Leave,
    }
}

/// The recorded transitions, as (from, to).
fn moves(effects: &[Effect]) -> Vec<(Status, Status)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(t) => Some((t.from, t.to)),
            _ => None,
        })
        .collect()
}

fn transitions(effects: &[Effect]) -> Vec<&Transition> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// The reply, rendered: "done", "n/a" or the error's words.
fn replied(effects: &[Effect]) -> Option<String> {
    effects.iter().find_map(|e| match e {
        Effect::Reply(Outcome::Done) => Some("done".to_string()),
        Effect::Reply(Outcome::NotApplicable) => Some("n/a".to_string()),
        Effect::Reply(Outcome::Failed(err)) => Some(render(err)),
        _ => None,
    })
}

fn desired_writes(effects: &[Effect]) -> Vec<DesiredState> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SetDesired { desired, .. } => Some(*desired),
            _ => None,
        })
        .collect()
}

fn spawns(effects: &[Effect]) -> Vec<bool> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Spawn { paused } => Some(*paused),
            _ => None,
        })
        .collect()
}

fn requests(effects: &[Effect]) -> Vec<ExecutorCommandKind> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Request { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

fn ready(reported: Status) -> Event {
    Event::Ready { reported }
}

fn adopted(desired: DesiredState) -> Event {
    Event::Adopted { desired }
}

/// A request that timed out on a connected executor.
fn no_answer() -> Event {
    Event::RequestEnded(Err(RequestError::NoAnswer {
        secs: 2.0,
        linked: true,
    }))
}

fn crash(exit: ExitInfo) -> Event {
    Event::Exited {
        exit,
        tail: String::new(),
    }
}

// ------------------------------------------------------------------ start

#[test]
fn start_of_a_running_or_paused_strategy_is_done_without_effects() {
    for status in [Status::Running, Status::Paused] {
        let c = with_process();
        let mut m = at(status, &c);
        let effects = m.step(command(CommandKind::Start), &c);
        assert_eq!(replied(&effects).as_deref(), Some("done"), "{status}");
        assert!(
            desired_writes(&effects).is_empty(),
            "{status}: desired_state untouched"
        );
        assert_eq!(m.status(), status);
    }
}

#[test]
fn start_of_a_strategy_already_starting_is_done_without_effects() {
    let mut m = machine(Status::Starting);
    let effects = m.step(command(CommandKind::Start), &with_process());
    assert_eq!(replied(&effects).as_deref(), Some("done"));
    assert!(spawns(&effects).is_empty());
}

#[test]
fn start_in_every_state_without_a_live_executor_sets_desired_running_and_spawns() {
    for status in [
        Status::Stopped,
        Status::Error,
        Status::Backoff,
        Status::Stopping,
        Status::Starting,
    ] {
        let c = ctx();
        let mut m = at(status, &c);
        let effects = m.step(command(CommandKind::Start), &c);
        assert_eq!(
            desired_writes(&effects),
            vec![DesiredState::Running],
            "{status}"
        );
        assert!(matches!(effects[1], Effect::ResetRestarts), "{status}");
        assert_eq!(spawns(&effects), vec![false], "{status}: not paused");
        assert_eq!(
            replied(&effects),
            None,
            "{status}: the reply waits for the start"
        );
        assert_eq!(
            m.backoff_until(),
            None,
            "{status}: no restart timer any more"
        );
    }
}

#[test]
fn a_spawned_executor_is_recorded_starting_with_the_command_then_awaited() {
    let c = ctx();
    let mut m = machine(Status::Stopped);
    m.step(command(CommandKind::Start), &c);
    let effects = m.step(Event::Spawned, &with_process());
    let t = transitions(&effects);
    assert_eq!((t[0].from, t[0].to), (Status::Stopped, Status::Starting));
    assert_eq!(t[0].reason.as_deref(), Some("started by an operator"));
    assert_eq!(t[0].command_id, Some(CMD));
    assert!(matches!(effects.last(), Some(Effect::AwaitReady)));
}

#[test]
fn a_start_that_reports_running_records_running_and_replies_done() {
    let c = with_process();
    let mut m = machine(Status::Stopped);
    m.step(command(CommandKind::Start), &c);
    m.step(Event::Spawned, &c);
    let effects = m.step(ready(Status::Running), &c);
    assert_eq!(moves(&effects), vec![(Status::Starting, Status::Running)]);
    assert_eq!(replied(&effects).as_deref(), Some("done"));
    assert_eq!(m.state(), State::Running { since: Some(c.now) });
}

#[test]
fn a_start_that_exits_with_bad_config_ends_in_error_and_fails_the_command() {
    let c = with_process();
    let mut m = machine(Status::Stopped);
    m.step(command(CommandKind::Start), &c);
    m.step(Event::Spawned, &c);
    let failure = StartError::Exited {
        exit: ExitInfo::Code(EXIT_BAD_CONFIG),
        tail: "error: bad threshold".into(),
    };
    let effects = m.step(Event::StartFailed(failure), &ctx());
    let t = transitions(&effects);
    assert_eq!((t[0].from, t[0].to), (Status::Starting, Status::Error));
    let words = format!(
        "the executor exited during start-up ({}): error: bad threshold",
        ExitInfo::Code(EXIT_BAD_CONFIG)
    );
    assert_eq!(t[0].error.as_deref(), Some(words.as_str()));
    assert_eq!(replied(&effects), Some(words));
}

#[test]
fn a_start_killed_in_its_start_up_is_a_crash_and_the_command_says_a_restart_is_scheduled() {
    let c = with_process();
    let mut m = machine(Status::Stopped);
    m.step(command(CommandKind::Start), &c);
    m.step(Event::Spawned, &c);
    let failure = StartError::Exited {
        exit: ExitInfo::Signal(9),
        tail: String::new(),
    };
    let effects = m.step(Event::StartFailed(failure), &ctx());
    assert_eq!(moves(&effects), vec![(Status::Starting, Status::Backoff)]);
    assert!(effects.iter().any(|e| matches!(e, Effect::CountRestart)));
    let words = replied(&effects).expect("a reply");
    assert!(
        words.ends_with("; an automatic restart is scheduled"),
        "{words}"
    );
}

#[test]
fn a_start_that_fails_while_the_manager_shuts_down_records_nothing() {
    let c = with_process();
    let mut m = machine(Status::Stopped);
    m.step(command(CommandKind::Start), &c);
    m.step(Event::Spawned, &c);
    let down = Ctx {
        shutting_down: true,
        ..c
    };
    let effects = m.step(Event::StartFailed(StartError::ShuttingDown), &down);
    assert!(moves(&effects).is_empty());
    assert_eq!(
        replied(&effects).as_deref(),
        Some("the manager is shutting down")
    );
}

// ------------------------------------------------------------------ stop

#[test]
fn stop_of_a_live_executor_writes_desired_stopped_first_then_shuts_it_down_with_grace() {
    for status in [Status::Running, Status::Paused, Status::Starting] {
        let c = with_process();
        let mut m = at(status, &c);
        let effects = m.step(command(stop_kind()), &c);
        assert!(
            matches!(
                effects[0],
                Effect::SetDesired {
                    desired: DesiredState::Stopped,
                    operator_stopped: true
                }
            ),
            "{status}: desired_state before anything else"
        );
        assert_eq!(moves(&effects), vec![(status, Status::Stopping)]);
        assert!(matches!(
            effects.last(),
            Some(Effect::Shutdown {
                reason: ShutdownReason::Stop,
                command_id: CMD,
                ..
            })
        ));
        assert_eq!(replied(&effects), None, "{status}: waits for the exit");
    }
}

#[test]
fn a_stopped_executor_is_recorded_stopped_and_the_stop_is_done() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(command(stop_kind()), &c);
    let effects = m.step(Event::StopEnded(Ok(())), &ctx());
    let t = transitions(&effects);
    assert_eq!((t[0].from, t[0].to), (Status::Stopping, Status::Stopped));
    assert_eq!(t[0].reason.as_deref(), Some("stop"));
    assert_eq!(replied(&effects).as_deref(), Some("done"));
}

#[test]
fn stop_without_a_process_in_every_state_is_recorded_stopped_by_an_operator() {
    for status in ALL.into_iter().filter(|s| *s != Status::Stopped) {
        let c = ctx();
        let mut m = at(status, &c);
        let effects = m.step(command(stop_kind()), &c);
        let t = transitions(&effects);
        assert_eq!((t[0].from, t[0].to), (status, Status::Stopped), "{status}");
        assert_eq!(t[0].reason.as_deref(), Some("stopped by an operator"));
        assert_eq!(replied(&effects).as_deref(), Some("done"), "{status}");
        assert_eq!(
            m.backoff_until(),
            None,
            "{status}: a scheduled restart is off"
        );
    }
}

#[test]
fn a_stop_the_executor_survives_fails_and_stays_stopping() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(command(stop_kind()), &c);
    let effects = m.step(
        Event::StopEnded(Err(StopError::SurvivedKill { pid: 99 })),
        &c,
    );
    assert!(moves(&effects).is_empty());
    assert_eq!(m.status(), Status::Stopping);
    assert_eq!(
        replied(&effects).as_deref(),
        Some("the executor (pid 99) survived SIGKILL; it may be stuck in the kernel")
    );
}

// ------------------------------------------------------------------ restart

#[test]
fn restart_stops_then_starts_and_replies_after_the_new_start() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let effects = m.step(command(restart_kind()), &c);
    assert_eq!(desired_writes(&effects), vec![DesiredState::Running]);
    assert!(matches!(
        effects.last(),
        Some(Effect::Shutdown {
            reason: ShutdownReason::Restart,
            ..
        })
    ));
    let effects = m.step(Event::StopEnded(Ok(())), &ctx());
    assert_eq!(moves(&effects), vec![(Status::Stopping, Status::Stopped)]);
    assert_eq!(spawns(&effects), vec![false]);
    assert_eq!(replied(&effects), None);
    m.step(Event::Spawned, &c);
    let effects = m.step(ready(Status::Running), &c);
    assert_eq!(replied(&effects).as_deref(), Some("done"));
}

#[test]
fn stop_of_a_stopped_strategy_is_done_and_records_nothing() {
    let c = ctx();
    let mut m = machine(Status::Stopped);
    let effects = m.step(command(stop_kind()), &c);
    assert!(transitions(&effects).is_empty(), "no stopped → stopped");
    assert_eq!(desired_writes(&effects), vec![DesiredState::Stopped]);
    assert_eq!(replied(&effects).as_deref(), Some("done"));
}

#[test]
fn restart_without_a_process_is_a_start_with_nothing_recorded_stopped() {
    for status in [Status::Stopped, Status::Error, Status::Backoff] {
        let c = ctx();
        let mut m = machine(status);
        let effects = m.step(command(restart_kind()), &c);
        assert!(
            transitions(&effects).is_empty(),
            "{status}: no stop recorded"
        );
        assert_eq!(desired_writes(&effects), vec![DesiredState::Running]);
        assert_eq!(spawns(&effects), vec![false], "{status}");
        assert_eq!(m.backoff_until(), None, "{status}");
        let effects = m.step(Event::Spawned, &c);
        assert_eq!(moves(&effects), vec![(status, Status::Starting)]);
        let effects = m.step(ready(Status::Running), &c);
        assert_eq!(moves(&effects), vec![(Status::Starting, Status::Running)]);
        assert_eq!(replied(&effects).as_deref(), Some("done"));
    }
}

#[test]
fn a_restart_whose_stop_fails_does_not_start() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(command(restart_kind()), &c);
    let effects = m.step(
        Event::StopEnded(Err(StopError::SurvivedKill { pid: 5 })),
        &c,
    );
    assert!(spawns(&effects).is_empty());
    assert!(replied(&effects).is_some_and(|w| w.contains("survived SIGKILL")));
}

#[test]
fn a_recovered_restart_whose_new_executor_already_started_is_not_applied_again() {
    let created = Utc::now() - chrono::Duration::seconds(5);
    for status in [Status::Running, Status::Paused] {
        let c = Ctx {
            started_at: Some(Utc::now()),
            ..with_process()
        };
        let mut m = at(status, &c);
        let effects = m.step(
            Event::Command(Command {
                id: CMD,
                kind: restart_kind(),
                global: false,
                recovered_from: Some(created),
                superseded: false,
            }),
            &c,
        );
        assert_eq!(replied(&effects).as_deref(), Some("done"), "{status}");
        assert!(desired_writes(&effects).is_empty());
    }
}

#[test]
fn a_recovered_restart_whose_executor_predates_it_is_applied() {
    let c = Ctx {
        started_at: Some(Utc::now() - chrono::Duration::seconds(60)),
        ..with_process()
    };
    let mut m = at(Status::Running, &c);
    let effects = m.step(
        Event::Command(Command {
            id: CMD,
            kind: restart_kind(),
            global: false,
            recovered_from: Some(Utc::now()),
            superseded: false,
        }),
        &c,
    );
    assert!(matches!(effects.last(), Some(Effect::Shutdown { .. })));
}

// ------------------------------------------------------------------ pause / resume

#[test]
fn pause_of_a_running_strategy_writes_desired_paused_before_asking_the_executor() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let effects = m.step(command(CommandKind::Pause), &c);
    assert!(matches!(
        effects[0],
        Effect::SetDesired {
            desired: DesiredState::Paused,
            ..
        }
    ));
    assert!(matches!(
        effects[1],
        Effect::Request {
            kind: ExecutorCommandKind::Pause,
            command_id: CMD
        }
    ));
}

#[test]
fn an_acknowledged_pause_records_paused_with_the_command_id_and_keeps_the_uptime() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(command(CommandKind::Pause), &c);
    let effects = m.step(Event::RequestEnded(Ok(())), &c);
    let t = transitions(&effects);
    assert_eq!((t[0].from, t[0].to), (Status::Running, Status::Paused));
    assert_eq!(t[0].command_id, Some(CMD));
    assert_eq!(replied(&effects).as_deref(), Some("done"));
    assert_eq!(m.state(), State::Paused { since: Some(c.now) });
}

#[test]
fn a_pause_the_executor_does_not_acknowledge_puts_desired_state_back() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(command(CommandKind::Pause), &c);
    let effects = m.step(no_answer(), &c);
    assert_eq!(desired_writes(&effects), vec![DesiredState::Running]);
    assert_eq!(m.desired(), DesiredState::Running);
    assert_eq!(m.status(), Status::Running);
    assert_eq!(
        replied(&effects).as_deref(),
        Some("the executor did not answer within 2s")
    );
}

#[test]
fn pause_of_a_paused_strategy_only_sets_desired_paused() {
    let c = with_process();
    let mut m = at(Status::Paused, &c);
    let effects = m.step(command(CommandKind::Pause), &c);
    assert_eq!(desired_writes(&effects), vec![DesiredState::Paused]);
    assert!(requests(&effects).is_empty());
    assert_eq!(replied(&effects).as_deref(), Some("done"));
}

#[test]
fn pause_in_every_state_that_is_not_live_fails_with_a_hint() {
    for status in NOT_LIVE {
        let mut m = machine(status);
        let effects = m.step(command(CommandKind::Pause), &ctx());
        assert_eq!(
            replied(&effects),
            Some(format!(
                "cannot pause: the strategy is {status}, not running; start it first"
            ))
        );
        assert!(desired_writes(&effects).is_empty(), "{status}");
    }
}

#[test]
fn resume_of_a_paused_strategy_writes_desired_running_then_asks_the_executor() {
    let c = with_process();
    let mut m = at(Status::Paused, &c);
    let effects = m.step(command(CommandKind::Resume), &c);
    assert_eq!(desired_writes(&effects), vec![DesiredState::Running]);
    assert_eq!(requests(&effects), vec![ExecutorCommandKind::Resume]);
    let effects = m.step(Event::RequestEnded(Ok(())), &c);
    assert_eq!(moves(&effects), vec![(Status::Paused, Status::Running)]);
    assert_eq!(replied(&effects).as_deref(), Some("done"));
}

#[test]
fn a_resume_the_executor_rejects_puts_desired_paused_back() {
    let c = with_process();
    let mut m = Machine::new(Status::Paused, DesiredState::Paused, false);
    let effects = m.step(command(CommandKind::Resume), &c);
    assert_eq!(desired_writes(&effects), vec![DesiredState::Running]);
    let effects = m.step(
        Event::RequestEnded(Err(RequestError::Rejected { reason: None })),
        &c,
    );
    assert_eq!(desired_writes(&effects), vec![DesiredState::Paused]);
    assert_eq!(
        replied(&effects).as_deref(),
        Some("rejected without a reason")
    );
}

#[test]
fn resume_of_a_running_strategy_only_sets_desired_running() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let effects = m.step(command(CommandKind::Resume), &c);
    assert_eq!(desired_writes(&effects), vec![DesiredState::Running]);
    assert_eq!(replied(&effects).as_deref(), Some("done"));
}

#[test]
fn resume_in_every_state_that_is_not_live_fails_with_a_hint() {
    for status in NOT_LIVE {
        let mut m = machine(status);
        let effects = m.step(command(CommandKind::Resume), &ctx());
        assert_eq!(
            replied(&effects),
            Some(format!(
                "cannot resume: the strategy is {status}, not running; start it instead"
            ))
        );
    }
}

// ------------------------------------------------------------------ update

#[test]
fn update_goes_through_the_executor_only_when_it_is_live() {
    for status in ALL {
        for process in [false, true] {
            let c = Ctx { process, ..ctx() };
            let mut m = machine(status);
            let patch = serde_json::json!({"threshold": 2});
            let effects = m.step(
                command(CommandKind::Update {
                    patch,
                    limits: None,
                }),
                &c,
            );
            let online = process && status.is_live();
            assert!(
                matches!(effects[..], [Effect::Update { online: o, command_id: CMD, .. }] if o == online),
                "{status}, process {process}"
            );
        }
    }
}

#[test]
fn an_update_outcome_is_the_command_outcome() {
    let mut m = machine(Status::Stopped);
    m.step(
        command(CommandKind::Update {
            patch: serde_json::json!({}),
            limits: None,
        }),
        &ctx(),
    );
    let effects = m.step(Event::UpdateEnded(Err(UpdateError::NotAnObject)), &ctx());
    assert_eq!(
        replied(&effects).as_deref(),
        Some("the merged config is not a JSON object")
    );
    assert_eq!(m.status(), Status::Stopped);
}

// ------------------------------------------------------------------ recovered and global

#[test]
fn a_superseded_recovered_command_is_done_without_effects_in_every_state() {
    for status in ALL {
        for kind in [
            CommandKind::Start,
            stop_kind(),
            restart_kind(),
            CommandKind::Pause,
        ] {
            let mut m = machine(status);
            let effects = m.step(
                Event::Command(Command {
                    id: CMD,
                    kind,
                    global: false,
                    recovered_from: Some(Utc::now()),
                    superseded: true,
                }),
                &with_process(),
            );
            assert_eq!(replied(&effects).as_deref(), Some("done"));
            assert!(moves(&effects).is_empty() && desired_writes(&effects).is_empty());
        }
    }
}

#[test]
fn a_global_command_applies_only_where_it_makes_sense() {
    for status in ALL {
        let c = with_process();
        let cases = [
            (
                stop_kind(),
                !matches!(status, Status::Stopped | Status::Error),
            ),
            (CommandKind::Pause, status == Status::Running),
            (CommandKind::Resume, status == Status::Paused),
        ];
        for (kind, applies) in cases {
            let word = kind.word();
            let mut m = at(status, &c);
            let effects = m.step(global(kind), &c);
            let not_applicable = replied(&effects).as_deref() == Some("n/a");
            assert_eq!(not_applicable, !applies, "global {word} in {status}");
        }
    }
}

// ------------------------------------------------------------------ crashes

#[test]
fn a_crash_in_every_state_with_a_process_schedules_a_restart_after_the_delay() {
    for status in [
        Status::Running,
        Status::Paused,
        Status::Stopping,
        Status::Starting,
    ] {
        let c = with_process();
        let mut m = at(status, &c);
        let effects = m.step(crash(ExitInfo::Signal(9)), &c);
        let t = transitions(&effects);
        assert_eq!((t[0].from, t[0].to), (status, Status::Backoff), "{status}");
        assert_eq!(t[0].reason.as_deref(), Some("crashed; restarting in 1.0s"));
        assert!(t[0]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("the executor exited without being asked")));
        assert_eq!(m.backoff_until(), Some(c.now + Duration::from_secs(1)));
        assert!(effects.iter().any(|e| matches!(e, Effect::CountRestart)));
    }
}

#[test]
fn a_kill_for_memory_is_a_crash_said_plainly_with_the_reason_oom() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let oom = ExitInfo::OutOfMemory { limit_mb: Some(64) };
    let effects = m.step(crash(oom), &c);
    let t = transitions(&effects);
    assert_eq!((t[0].from, t[0].to), (Status::Running, Status::Backoff));
    assert_eq!(t[0].reason.as_deref(), Some("oom"));
    assert_eq!(
        t[0].error.as_deref(),
        Some("killed: out of memory, limit 64 MB")
    );
    assert!(effects.iter().any(|e| matches!(e, Effect::CountRestart)));
}

#[test]
fn consecutive_crashes_double_the_delay() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let mut delays = Vec::new();
    for _ in 0..3 {
        m.step(crash(ExitInfo::Code(1)), &c);
        delays.push(m.backoff_until().map(|u| u - c.now));
        m.step(Event::BackoffOver, &c);
        m.step(Event::Spawned, &c);
        // Up again, but not for long: the next crash is consecutive.
        m.step(ready(Status::Running), &c);
    }
    let secs = |s| Some(Duration::from_secs(s));
    assert_eq!(delays, vec![secs(1), secs(2), secs(4)]);
}

#[test]
fn a_crash_after_a_stable_run_counts_as_the_first() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.consecutive_crashes = 3;
    let later = Ctx {
        now: c.now + Duration::from_secs(61),
        ..c
    };
    m.step(crash(ExitInfo::Code(1)), &later);
    assert_eq!(m.consecutive_crashes, 1);
    assert_eq!(m.backoff_until(), Some(later.now + Duration::from_secs(1)));
}

#[test]
fn a_crash_loop_ends_in_error_after_max_crashes() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.consecutive_crashes = 4;
    let effects = m.step(crash(ExitInfo::Code(1)), &c);
    let t = transitions(&effects);
    assert_eq!(t[0].to, Status::Error);
    assert_eq!(t[0].reason.as_deref(), Some("crash loop"));
    assert!(t[0]
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with("gave up after 5 consecutive crashes; last: ")));
    assert_eq!(m.backoff_until(), None);
}

#[test]
fn an_exit_after_a_halted_frame_is_an_error_not_a_crash() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(
        Event::Halted {
            reason: "drawdown limit".into(),
        },
        &c,
    );
    let effects = m.step(crash(ExitInfo::Code(1)), &c);
    let t = transitions(&effects);
    assert_eq!(
        (t[0].to, t[0].reason.as_deref()),
        (Status::Error, Some("halted"))
    );
    assert_eq!(
        t[0].error.as_deref(),
        Some("halted by the strategy: drawdown limit")
    );
}

#[test]
fn an_unknown_exit_whose_log_says_halted_is_an_error() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let effects = m.step(
        Event::Exited {
            exit: ExitInfo::Unknown,
            tail: "tick 9\nhalted: out of cash".into(),
        },
        &c,
    );
    assert_eq!(
        transitions(&effects)[0].error.as_deref(),
        Some("halted by the strategy: out of cash")
    );
}

#[test]
fn an_exit_with_bad_config_is_an_error_not_a_crash() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let effects = m.step(crash(ExitInfo::Code(EXIT_BAD_CONFIG)), &c);
    assert_eq!(moves(&effects), vec![(Status::Running, Status::Error)]);
    assert!(!effects.iter().any(|e| matches!(e, Effect::CountRestart)));
}

// ------------------------------------------------------------------ backoff

#[test]
fn backoff_expiry_restarts_the_executor_running() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(crash(ExitInfo::Code(1)), &c);
    let effects = m.step(Event::BackoffOver, &ctx());
    assert_eq!(spawns(&effects), vec![false]);
    let effects = m.step(Event::Spawned, &c);
    assert_eq!(
        transitions(&effects)[0].reason.as_deref(),
        Some("automatic restart after a crash")
    );
}

#[test]
fn backoff_expiry_restarts_a_paused_strategy_paused_so_it_never_trades() {
    let c = with_process();
    let mut m = Machine::new(Status::Paused, DesiredState::Paused, false);
    m.step(crash(ExitInfo::Code(1)), &c);
    let effects = m.step(Event::BackoffOver, &ctx());
    assert_eq!(spawns(&effects), vec![true], "--start-paused");
    m.step(Event::Spawned, &c);
    let effects = m.step(ready(Status::Paused), &c);
    assert_eq!(moves(&effects), vec![(Status::Starting, Status::Paused)]);
    assert_eq!(replied(&effects), None, "no operator waits");
}

#[test]
fn an_automatic_restart_that_fails_for_good_ends_in_error() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(crash(ExitInfo::Code(1)), &c);
    m.step(Event::BackoffOver, &c);
    let failure = StartError::TimedOut { secs: 30.0 };
    let effects = m.step(Event::StartFailed(failure), &ctx());
    let t = transitions(&effects);
    assert_eq!((t[0].from, t[0].to), (Status::Backoff, Status::Error));
    assert_eq!(
        t[0].error.as_deref(),
        Some("the executor did not finish initialising within 30s (start timeout) and was killed")
    );
}

// ------------------------------------------------------------------ start-up

#[test]
fn adoption_of_a_running_executor_records_running_adopted() {
    let c = with_process();
    let mut m = machine(Status::Running);
    let effects = m.step(adopted(DesiredState::Running), &c);
    let t = transitions(&effects);
    assert_eq!(
        (t[0].to, t[0].reason.as_deref()),
        (Status::Running, Some("adopted"))
    );
    assert_eq!(effects.len(), 1);
    assert_eq!(m.state(), State::Running { since: Some(c.now) });
}

#[test]
fn adoption_keeps_a_paused_executor_paused_and_resumes_it_if_desired_running() {
    let c = with_process();
    let mut m = machine(Status::Paused);
    let effects = m.step(adopted(DesiredState::Running), &c);
    assert_eq!(moves(&effects), vec![(Status::Paused, Status::Paused)]);
    assert_eq!(requests(&effects), vec![ExecutorCommandKind::Resume]);
}

#[test]
fn adoption_pauses_a_running_executor_whose_recovered_commands_say_paused() {
    let c = with_process();
    let mut m = machine(Status::Running);
    let effects = m.step(adopted(DesiredState::Paused), &c);
    assert!(matches!(
        effects.last(),
        Some(Effect::Request {
            kind: ExecutorCommandKind::Pause,
            command_id
        }) if *command_id == c.fresh_id
    ));
    let effects = m.step(Event::RequestEnded(Ok(())), &c);
    assert_eq!(moves(&effects), vec![(Status::Running, Status::Paused)]);
    assert_eq!(replied(&effects), None);
}

#[test]
fn adoption_of_an_executor_whose_row_is_not_live_follows_the_desired_state() {
    for status in [Status::Backoff, Status::Starting, Status::Stopped] {
        let c = with_process();
        let mut m = machine(status);
        let effects = m.step(adopted(DesiredState::Paused), &c);
        assert_eq!(moves(&effects), vec![(status, Status::Paused)], "{status}");
        assert!(requests(&effects).is_empty(), "{status}: spawned paused");
        let mut m = machine(status);
        let effects = m.step(adopted(DesiredState::Running), &c);
        assert_eq!(moves(&effects), vec![(status, Status::Running)], "{status}");
        assert!(requests(&effects).is_empty(), "{status}");
    }
}

#[test]
fn adoption_stops_an_executor_whose_strategy_should_be_stopped() {
    for status in ALL {
        let c = with_process();
        let mut m = machine(status);
        let effects = m.step(adopted(DesiredState::Stopped), &c);
        assert_eq!(moves(&effects)[1].1, Status::Stopping, "{status}");
        assert!(matches!(
            effects.last(),
            Some(Effect::Shutdown {
                grace: DEFAULT_STOP_TIMEOUT,
                reason: ShutdownReason::Stop,
                ..
            })
        ));
    }
}

#[test]
fn at_start_up_a_live_row_with_nothing_running_becomes_stopped() {
    for status in ALL {
        let mut m = machine(status);
        let effects = m.step(Event::Idle { stale_pid: true }, &ctx());
        match status {
            Status::Stopped | Status::Error => {
                assert_eq!(
                    moves(&effects),
                    vec![(status, status)],
                    "re-recorded without its pid"
                );
                assert_eq!(transitions(&effects)[0].reason, None);
            }
            _ => {
                let t = transitions(&effects);
                assert_eq!((t[0].from, t[0].to), (status, Status::Stopped));
                assert_eq!(t[0].reason.as_deref(), Some("not running at manager start"));
            }
        }
    }
}

#[test]
fn at_start_up_a_stopped_row_without_a_pid_is_left_alone() {
    let mut m = machine(Status::Stopped);
    assert!(m.step(Event::Idle { stale_pid: false }, &ctx()).is_empty());
}

#[test]
fn boot_starts_paused_when_desired_paused() {
    let mut m = machine(Status::Paused);
    let effects = m.step(
        Event::Boot {
            desired: DesiredState::Paused,
        },
        &ctx(),
    );
    assert_eq!(spawns(&effects), vec![true]);
    let effects = m.step(Event::Spawned, &with_process());
    assert_eq!(
        transitions(&effects)[0].reason.as_deref(),
        Some("starting at manager start")
    );
}

// ------------------------------------------------------------------ reports

#[test]
fn a_paused_hello_from_a_running_executor_is_followed() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let effects = m.step(
        Event::Connected {
            hello: Status::Paused,
        },
        &c,
    );
    let t = transitions(&effects);
    assert_eq!((t[0].from, t[0].to), (Status::Running, Status::Paused));
    assert_eq!(t[0].reason.as_deref(), Some("reported by the executor"));
}

#[test]
fn a_state_frame_is_recorded_with_its_reason_and_command_only_between_live_states() {
    let c = with_process();
    let report = |status| Event::Reported {
        status,
        reason: Some("redis pause".into()),
        command_id: Some(CMD),
    };
    let mut m = at(Status::Running, &c);
    let effects = m.step(report(Status::Paused), &c);
    assert_eq!(transitions(&effects)[0].command_id, Some(CMD));
    let mut starting = machine(Status::Starting);
    assert!(starting.step(report(Status::Running), &c).is_empty());
    assert!(m.step(report(Status::Paused), &c).is_empty(), "no change");
}

// ------------------------------------------------------------------ reconciler and outages

#[test]
fn the_reconciler_asks_a_running_executor_to_pause_when_desired_paused() {
    let c = with_process();
    let mut m = Machine::new(Status::Running, DesiredState::Paused, false);
    let effects = m.step(Event::Tick, &c);
    assert_eq!(requests(&effects), vec![ExecutorCommandKind::Pause]);
    let mut m = Machine::new(Status::Paused, DesiredState::Running, false);
    assert_eq!(
        requests(&m.step(Event::Tick, &c)),
        vec![ExecutorCommandKind::Resume]
    );
}

#[test]
fn the_reconciler_waits_for_the_control_link() {
    let unlinked = Ctx {
        linked: false,
        ..with_process()
    };
    let mut m = Machine::new(Status::Running, DesiredState::Paused, false);
    assert!(m.step(Event::Tick, &unlinked).is_empty());
    assert!(m.step(Event::Tick, &ctx()).is_empty(), "no process");
}

#[test]
fn the_reconciler_leaves_agreeing_states_alone() {
    for status in ALL {
        let mut m = Machine::new(status, DesiredState::Running, false);
        let effects = m.step(Event::Tick, &with_process());
        assert_eq!(effects.is_empty(), status != Status::Paused, "{status}");
    }
}

#[test]
fn a_failed_reconcile_changes_nothing_and_is_asked_again_next_tick() {
    let c = with_process();
    let mut m = Machine::new(Status::Running, DesiredState::Paused, false);
    m.step(Event::Tick, &c);
    let effects = m.step(no_answer(), &c);
    assert!(effects.is_empty(), "no desired_state rewrite, no reply");
    assert_eq!(m.desired(), DesiredState::Paused);
    assert_eq!(
        requests(&m.step(Event::Tick, &c)),
        vec![ExecutorCommandKind::Pause]
    );
}

#[test]
fn a_stop_keeps_desired_stopped_for_the_retry_even_if_the_write_failed() {
    // The shell retries the write from `desired()`: an outage never loses it.
    let c = ctx();
    let mut m = machine(Status::Running);
    m.step(command(stop_kind()), &c);
    assert_eq!(
        (m.desired(), m.operator_stopped()),
        (DesiredState::Stopped, true)
    );
}

// ------------------------------------------------------------------ manager shutdown

#[test]
fn the_manager_leaves_its_executors_running_when_it_exits() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    assert!(m.step(Event::Shutdown, &c).is_empty());
}

#[test]
fn with_stop_strategies_on_exit_the_manager_stops_them_as_a_host_shutdown() {
    let c = Ctx {
        stop_on_exit: true,
        ..with_process()
    };
    let mut m = at(Status::Paused, &c);
    let effects = m.step(Event::Shutdown, &c);
    assert_eq!(moves(&effects), vec![(Status::Paused, Status::Stopping)]);
    assert!(matches!(
        effects.last(),
        Some(Effect::Shutdown {
            reason: ShutdownReason::HostShutdown,
            ..
        })
    ));
    assert!(Machine::new(Status::Stopped, DesiredState::Stopped, true)
        .step(
            Event::Shutdown,
            &Ctx {
                stop_on_exit: true,
                ..ctx()
            }
        )
        .is_empty());
}

#[test]
fn next_is_step_by_value() {
    let (m, effects) = next(
        machine(Status::Stopped),
        command(CommandKind::Start),
        &ctx(),
    );
    assert_eq!(spawns(&effects), vec![false]);
    assert_eq!(m.desired(), DesiredState::Running);
}

#[test]
fn trigger_of_a_running_strategy_goes_to_the_executions_and_fails_otherwise() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let effects = m.step(command(CommandKind::Trigger), &c);
    assert!(
        matches!(effects.as_slice(), [Effect::Trigger { .. }]),
        "{effects:?}"
    );
    assert_eq!(m.status(), Status::Running);
    let mut m = at(Status::Paused, &c);
    let effects = m.step(command(CommandKind::Trigger), &c);
    assert!(replied(&effects)
        .unwrap()
        .contains("paused strategy is not executed; resume it first"));
    for status in NOT_LIVE {
        let mut m = machine(status);
        let effects = m.step(command(CommandKind::Trigger), &ctx());
        assert_eq!(
            replied(&effects),
            Some(format!(
                "cannot trigger: the strategy is {status}, not running; start it first"
            ))
        );
    }
}

// ------------------------------------------------------------------ hand-over (cluster)

fn move_kind() -> CommandKind {
    CommandKind::Move {
        node: "node-b".into(),
    }
}

fn releases(effects: &[Effect]) -> Vec<Option<String>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Release { to, .. } => Some(to.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_move_checks_its_target_stops_gracefully_keeps_desired_and_releases() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    let fx = m.step(command(move_kind()), &c);
    assert!(matches!(&fx[..], [Effect::CheckTarget { node }] if node == "node-b"));
    let fx = m.step(Event::TargetChecked(Ok(TargetCheck::Fits)), &c);
    assert_eq!(moves(&fx), vec![(Status::Running, Status::Stopping)]);
    assert_eq!(transitions(&fx)[0].reason.as_deref(), Some("move"));
    assert!(desired_writes(&fx).is_empty(), "not an operator's stop");
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Shutdown {
            mode: StopMode::Leave,
            reason: ShutdownReason::Restart,
            ..
        }
    )));
    let fx = m.step(Event::StopEnded(Ok(())), &ctx());
    assert_eq!(moves(&fx), vec![(Status::Stopping, Status::Stopped)]);
    assert_eq!(transitions(&fx)[0].reason.as_deref(), Some("move"));
    assert_eq!(releases(&fx), vec![Some("node-b".to_string())]);
    assert_eq!(replied(&fx), None, "replied once released");
    let fx = m.step(Event::Released(Ok(())), &ctx());
    assert_eq!(replied(&fx).as_deref(), Some("done"));
    assert_eq!(m.desired(), DesiredState::Running);
}

#[test]
fn a_move_to_a_refused_target_stops_nothing_and_to_its_own_node_is_a_no_op() {
    let c = with_process();
    let mut m = at(Status::Running, &c);
    m.step(command(move_kind()), &c);
    let refused = HandOverError::Draining {
        node: "node-b".into(),
    };
    let fx = m.step(Event::TargetChecked(Err(refused)), &c);
    assert!(moves(&fx).is_empty());
    assert!(replied(&fx).unwrap().contains("is draining"));
    m.step(command(move_kind()), &c);
    let fx = m.step(Event::TargetChecked(Ok(TargetCheck::SameNode)), &c);
    assert!(moves(&fx).is_empty());
    assert_eq!(replied(&fx).as_deref(), Some("n/a"));
    assert_eq!(m.status(), Status::Running);
}

#[test]
fn a_hand_over_that_is_not_written_starts_the_strategy_again_here() {
    let c = with_process();
    let mut m = at(Status::Paused, &c);
    m.desired = DesiredState::Paused;
    m.step(global(CommandKind::Drain { node: "a".into() }), &c);
    let fx = m.step(Event::StopEnded(Ok(())), &ctx());
    assert_eq!(releases(&fx), vec![None]);
    let fx = m.step(Event::Released(Err(HandOverError::DatabaseAway)), &ctx());
    assert!(replied(&fx).unwrap().contains("stays on this node"));
    assert_eq!(spawns(&fx), vec![true], "started again, paused as it was");
}

#[test]
fn a_drain_releases_a_strategy_without_an_executor_at_once_in_every_state() {
    for status in NOT_LIVE {
        let mut m = machine(status);
        let fx = m.step(global(CommandKind::Drain { node: "a".into() }), &ctx());
        assert!(moves(&fx).is_empty(), "{status}");
        assert_eq!(releases(&fx), vec![None], "{status}");
        let fx = m.step(Event::Released(Ok(())), &ctx());
        assert_eq!(replied(&fx).as_deref(), Some("done"), "{status}");
        assert!(spawns(&fx).is_empty());
    }
}
