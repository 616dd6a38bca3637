# A Chef recipe that takes one step of the machine in states.yaml, the way Facebook's
# StateService post shows it: the `only_if` guard asks Levee "is this machine in green_state
# now?" (curl exits 0 on 200, non-zero on 406), and only then does Chef run the step and report
# it done, which moves the machine on to red_state.
#
# Put canChangeMachine.curl and didChangeMachine.curl in `home_dir` (with the URL of your Levee
# server). A second Chef run does nothing: the machine is no longer in green_state, so the
# guard answers no.

home_dir = '/opt/levee-example'
# The step itself: replace with the command that does the green step's work.
change_command = './change_machine.sh'

directory home_dir

%w(canChangeMachine.curl didChangeMachine.curl).each do |config|
  cookbook_file ::File.join(home_dir, config) do
    source config
    mode '0644'
  end
end

execute 'change_machine' do
  cwd home_dir
  # The report runs only if the step succeeded (`&&`), so a failed step is retried next run.
  command "#{change_command} && curl -K didChangeMachine.curl"
  only_if 'curl -K canChangeMachine.curl', :cwd => home_dir
end
